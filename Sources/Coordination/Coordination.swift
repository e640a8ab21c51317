// Module Coordination.
//
// The coordinator and worker as state machines (value types whose `on…`
// methods return directives), in the style of swift-cluster-membership:
// joining, dispatch, liveness, re-queues, spot checks and crash accounting,
// testable with no sockets, files or clocks (a manual clock drives them).
