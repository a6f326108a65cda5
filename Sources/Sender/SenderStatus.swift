import Foundation
import StatusModel
import WALCore

/// What the sender knows about the chain; `Sender.status` turns it into the shared status document.
struct SenderState: Sendable {
    var state = SenderSupervisor.Status.starting
    var stateSince = Date()
    var lastError: String?
    var systemIdentifier: String?
    var timeline: UInt32?
    var primaryLastMessageAt: ContinuousClock.Instant?
    /// End of WAL handed to the link.
    var sent: LSN = .invalid
    var receiverWritten: LSN = .invalid
    var receiverDurable: LSN = .invalid
    var replayed: LSN = .invalid
    var receiverLastAckAt: ContinuousClock.Instant?
    var connectedSince: Date?
    /// The link has been down since; starts at process start so "never connected" also counts.
    var disconnectedSince: Date? = Date()
    var walBytesSent: UInt64 = 0
    var walFramesSent: UInt64 = 0
    /// Frames compressed with high effort (LZ4HC) because the link was the bottleneck.
    var walFramesHighCompression: UInt64 = 0
    var wireBytesSent: UInt64 = 0
    var slot: StatusDocument.Slot
    var lag = LagTracker()
    /// Highest position acknowledged to the primary from the local buffer; .invalid when none is outstanding.
    var acknowledgedFromBuffer: LSN = .invalid
    /// Set while commits are (or were, until the receiver has them all) acknowledged from the local buffer.
    var degradedSince: Date?

    init(slot: String) { self.slot = StatusDocument.Slot(name: slot) }

    var primaryLSN: LSN { lag.primaryLSN }

    mutating func primaryReported(_ lsn: LSN, at time: PostgresTimestamp) {
        primaryLastMessageAt = .now
        lag.primaryReported(
            lsn: lsn, primaryTime: time.unixSeconds, arrivedAt: .now,
            localWallClock: Date().timeIntervalSince1970)
    }

    /// The primary's clock now, for keepalives to the receiver: its lag arithmetic stays in one clock.
    var primaryNow: PostgresTimestamp {
        guard let seconds = lag.primaryNow(at: .now) else { return .now() }
        return PostgresTimestamp(unixMicroseconds: Int64(seconds * 1_000_000))
    }

    mutating func setState(_ new: SenderSupervisor.Status, error: String?) {
        if state != new { stateSince = Date() }
        if new == .streaming {
            if connectedSince == nil { connectedSince = Date() }
            disconnectedSince = nil
        } else if state == .streaming || connectedSince != nil {
            connectedSince = nil
            if disconnectedSince == nil { disconnectedSince = Date() }
        }
        state = new
        if let error { lastError = error } else if new == .streaming { lastError = nil }
    }

    func chain(now: ContinuousClock.Instant) -> [StatusDocument.Stage] {
        let stages: [(StatusDocument.StageName, LSN)] = [
            (.primary, primaryLSN), (.sent, sent), (.received, receiverWritten), (.durable, receiverDurable),
            (.replayed, replayed),
        ]
        return stages.map { lag.stage($0, at: $1, now: now) }
    }

    /// WAL acknowledged to the primary but not durable at the DR site.
    func rpoExposure(now: ContinuousClock.Instant) -> StatusDocument.RPOExposure? {
        guard acknowledgedFromBuffer.isValid, acknowledgedFromBuffer > receiverDurable else { return nil }
        var seconds: Double?
        if let offsite = lag.secondsBehind(receiverDurable, at: now),
            let acknowledged = lag.secondsBehind(acknowledgedFromBuffer, at: now)
        {
            seconds = max(0, ((offsite - acknowledged) * 1000).rounded() / 1000)
        }
        return .init(
            bytes: acknowledgedFromBuffer.bytesAfter(receiverDurable), seconds: seconds,
            acknowledgedLSN: "\(acknowledgedFromBuffer)", offsiteDurableLSN: "\(receiverDurable)")
    }

    /// Forgets lag points every stage has passed (the slowest stage bounds what is still needed).
    mutating func forgetPassedPoints() {
        let slowest =
            [sent, receiverWritten, receiverDurable, replayed, acknowledgedFromBuffer].filter(\.isValid).min() ?? .invalid
        if slowest.isValid { lag.forget(upTo: slowest) }
    }
}
