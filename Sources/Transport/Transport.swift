// Module Transport.
//
// Bytes only, under the links (module Link, the van): ZeroMQ sockets,
// contexts and CURVE/ZAP, and sealed shared-memory files for payloads between
// processes on one host. Knows no message types or training.
