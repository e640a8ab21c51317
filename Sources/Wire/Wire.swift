// Module Wire.
//
// The message model, like ps-lite's messages over its van: typed, versioned
// messages (`Message`, `Envelope`) and their byte encoding with bounded, checked
// decoding. Imports no C and knows no sockets (docs/PROTOCOL.md).
