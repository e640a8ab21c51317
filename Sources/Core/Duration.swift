/// A duration for a progress line: 1h05m, 4m07s; '-' when unknown.
public func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "-" }
    let t = Int(s)
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
}
