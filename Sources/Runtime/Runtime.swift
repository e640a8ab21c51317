// Module Runtime.
//
// The thin shells that run the state machines: the links that own the
// sockets and timers, the coordinator and worker shells, the host agent and
// its local processes, keys, network namespaces for multi-host tests, and
// event traces.
