import Foundation
import WALCore

/// Turns the primary's WAL positions and timestamps into lag in bytes and seconds.
///
/// Every WAL frame and keepalive says "at time T (the primary's clock) the primary's WAL ended at L". The
/// tracker keeps those points as L advances. A stage at position X is then behind by the age of the
/// oldest WAL it lacks: the time of the first point beyond X, measured against the primary's clock now.
/// "Now" on the primary's clock is the newest timestamp plus the time elapsed here since it arrived
/// (monotonic), so a skewed clock on either host does not distort the lag; the skew is reported apart.
public struct LagTracker: Sendable {
    struct Point: Sendable {
        var lsn: LSN
        var primaryTime: Double
    }

    private var points: [Point] = []
    private let capacity: Int
    /// Points closer together than this (in the primary's seconds) are merged: a busy primary sends
    /// thousands of frames a second and the lag needs no finer resolution.
    private let baseSpacing: Double
    /// Grows when the points fill up, so old and new WAL keep the same (coarser) resolution.
    private var spacing: Double
    /// The newest report: its primary time and when it arrived here.
    private var newest: (primaryTime: Double, arrivedAt: ContinuousClock.Instant, wallClock: Double)?
    public private(set) var primaryLSN: LSN = .invalid

    public init(capacity: Int = 4096, spacingSeconds: Double = 0.05) {
        precondition(capacity >= 4)
        self.capacity = capacity
        self.baseSpacing = spacingSeconds
        self.spacing = spacingSeconds
    }

    /// The primary's WAL ended at `lsn` at `primaryTime` (Unix seconds, its clock); it reached us at
    /// `arrivedAt`, when our wall clock read `localWallClock` (used only to report skew).
    public mutating func primaryReported(
        lsn: LSN, primaryTime: Double, arrivedAt: ContinuousClock.Instant,
        localWallClock: Double
    ) {
        guard primaryTime > 0 else { return }
        if let newest, primaryTime < newest.primaryTime {
            // A timestamp going backwards (a restarted primary with a clock step): keep time monotonic.
            self.newest = (newest.primaryTime, arrivedAt, localWallClock)
        } else {
            newest = (primaryTime, arrivedAt, localWallClock)
        }
        guard lsn > primaryLSN else { return }
        primaryLSN = lsn
        let time = newest!.primaryTime
        if let last = points.last, points.count >= 2, time - points[points.count - 2].primaryTime < spacing {
            // Merge into the last point: it still marks "WAL up to here existed by then".
            points[points.count - 1] = Point(lsn: lsn, primaryTime: max(last.primaryTime, time))
        } else {
            points.append(Point(lsn: lsn, primaryTime: time))
        }
        if points.count > capacity { thin() }
    }

    /// Halves the resolution instead of forgetting old WAL's time: a stage far behind still gets an honest
    /// (coarser) age rather than none. New points then come at the coarser spacing too.
    private mutating func thin() {
        let last = points[points.count - 1]
        points = points.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
        if points.last?.lsn != last.lsn { points.append(last) }
        spacing = max(spacing * 2, (points.last!.primaryTime - points.first!.primaryTime) / Double(capacity / 2))
    }

    /// Drops points no stage needs any more (all stages are past `position`), keeping the one just
    /// before it for interpolation.
    public mutating func forget(upTo position: LSN) {
        let index = points.firstIndex(where: { $0.lsn > position }) ?? points.count - 1
        if index > 1 { points.removeFirst(index - 1) }
        if points.count < capacity / 4 { spacing = baseSpacing }
    }

    /// The primary's clock now, estimated from the newest report.
    public func primaryNow(at now: ContinuousClock.Instant) -> Double? {
        guard let newest else { return nil }
        return newest.primaryTime + max(0, seconds(now - newest.arrivedAt))
    }

    /// How far the primary's clock is ahead of ours at the newest report (includes one-way network delay).
    public var clockSkewSeconds: Double? {
        guard let newest else { return nil }
        return ((newest.primaryTime - newest.wallClock) * 1000).rounded() / 1000
    }

    public func bytesBehind(_ position: LSN) -> UInt64? {
        guard primaryLSN.isValid, position.isValid else { return nil }
        return primaryLSN.bytesAfter(position)
    }

    /// Seconds `position` is behind the primary: 0 when it has everything the primary reported, nil when
    /// nothing is known yet.
    public func secondsBehind(_ position: LSN, at now: ContinuousClock.Instant) -> Double? {
        guard primaryLSN.isValid, position.isValid, let primaryNow = primaryNow(at: now) else { return nil }
        guard position < primaryLSN else { return 0 }
        // The WAL just after `position` came into being between the point before it and the point after
        // it; interpolate by position. Before the first point we only know it is at least that old.
        let index = points.firstIndex { $0.lsn > position } ?? points.count - 1
        var writtenAt = points[index].primaryTime
        if index > 0 {
            let a = points[index - 1], b = points[index]
            let fraction =
                Double(position.rawValue - min(position.rawValue, a.lsn.rawValue)) / Double(b.lsn.rawValue - a.lsn.rawValue)
            writtenAt = a.primaryTime + (b.primaryTime - a.primaryTime) * min(1, fraction)
        }
        return max(0, ((primaryNow - writtenAt) * 1000).rounded() / 1000)
    }

    var pointCount: Int { points.count }

    /// One stage of the lag chain at `lsn` (invalid: a stage this process cannot see).
    public func stage(_ name: StatusDocument.StageName, at lsn: LSN, now: ContinuousClock.Instant) -> StatusDocument.Stage {
        StatusDocument.Stage(
            name: name.rawValue, lsn: lsn.isValid ? lsn.description : nil,
            bytesBehind: bytesBehind(lsn), secondsBehind: secondsBehind(lsn, at: now))
    }
}

/// A duration in (fractional) seconds.
public func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// The lag over the last minutes, one point every `interval`, for the dashboard's chart.
public struct LagHistory: Sendable {
    public private(set) var points: [StatusDocument.LagPoint] = []
    let capacity: Int
    let interval: Double

    public init(capacity: Int = 300, intervalSeconds: Double = 2) {
        self.capacity = capacity
        self.interval = intervalSeconds
    }

    public mutating func record(_ point: StatusDocument.LagPoint) {
        if let last = points.last, point.at.timeIntervalSince(last.at) < interval { return }
        points.append(point)
        if points.count > capacity { points.removeFirst(points.count - capacity) }
    }
}

/// A duration in seconds, to the millisecond, for status output.
public func roundedSeconds(_ duration: Duration) -> Double {
    (seconds(duration) * 1000).rounded() / 1000
}
