// Module Coordination.
//
// The coordinator, the worker and the host agent as state machines (value
// types whose `on…` methods return directives), in the style of
// swift-cluster-membership: joining, dispatch, liveness, re-queues, spot
// checks, crash accounting, and how work is cut into units (`TrainPlan`),
// testable with no sockets, files or clocks (a manual clock drives them).
