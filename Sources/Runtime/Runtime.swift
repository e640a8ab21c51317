// Module Runtime.
//
// The thin shells that run the state machines over the links: the
// coordinator's, a worker's and the host agent's (sockets, timers and the
// compute thread are theirs, every decision their machine's), the local
// processes a `train` or an agent starts and supervises, and event traces.
