import ShipProtocol
import WALCore

/// Whether the primary is lost, as the sender sees it from the primary's own site. Pure: events in, the verdict
/// and the next probe out; the time comes with the events.
///
/// The primary is lost only when its replication connection dropped and, for `confirmation` (2 s), every attempt
/// to reach it since was refused or unanswered. Any answer from the server withdraws the verdict, an error
/// included: a PostgreSQL that crash-restarts answers "the database system is starting up" (or in recovery mode,
/// or shutting down) and is not lost. A frozen primary whose connection stays open is not judged lost here: its
/// silence reaches the DR site as the link's silence.
struct PrimaryWatch: Sendable {
    static let confirmation = Duration.seconds(2)
    /// How often the primary is asked while the sender decides; once lost, `lostProbeInterval`.
    static let probeInterval = Duration.milliseconds(500)
    static let lostProbeInterval = Duration.seconds(1)

    enum Verdict: Hashable, Sendable {
        /// Connected, or the primary answered the last attempt.
        case alive(lastHeard: ContinuousClock.Instant?)
        /// Dropped at `droppedAt`, nothing answered since, for less than `confirmation`.
        case unanswered(droppedAt: ContinuousClock.Instant, lastHeard: ContinuousClock.Instant?)
        /// Dropped at `since`, and every attempt for `confirmation` went unanswered.
        case lost(since: ContinuousClock.Instant, lastHeard: ContinuousClock.Instant?)
        /// The sender is stopping on purpose while the primary was not lost.
        case senderStopped(lastHeard: ContinuousClock.Instant?)
    }

    private(set) var lastHeard: ContinuousClock.Instant?
    /// When the replication connection dropped, if nothing answered since.
    private(set) var droppedAt: ContinuousClock.Instant?
    /// Set once the drop is confirmed.
    private(set) var lost = false
    private(set) var stopping = false
    private(set) var lastProbe: ContinuousClock.Instant?

    /// The primary answered: a message on the replication connection, a connection it accepted, an error it sent.
    /// An answer from before the drop (a message read late) moves the last contact but withdraws nothing.
    mutating func answered(at now: ContinuousClock.Instant) {
        lastHeard = max(lastHeard ?? now, now)
        if let droppedAt, now < droppedAt { return }
        droppedAt = nil
        lost = false
    }

    /// The replication connection ended without an answer that explains it (reset, closed, a failed connect).
    mutating func connectionDropped(at now: ContinuousClock.Instant) {
        if droppedAt == nil { droppedAt = now }
    }

    /// An attempt to reach the primary was refused or went unanswered (no PostgreSQL message came back).
    mutating func unanswered(at now: ContinuousClock.Instant) {
        lastProbe = now
        guard let droppedAt else { return }
        if now - droppedAt >= Self.confirmation { lost = true }
    }

    /// Marks the start of an attempt, so the next one is not due before its interval.
    mutating func probing(at now: ContinuousClock.Instant) {
        lastProbe = now
    }

    /// A graceful stop (SIGTERM, SIGINT).
    mutating func senderStopping() {
        stopping = true
    }

    var verdict: Verdict {
        if let droppedAt, lost { return .lost(since: droppedAt, lastHeard: lastHeard) }
        if stopping { return .senderStopped(lastHeard: lastHeard) }
        if let droppedAt { return .unanswered(droppedAt: droppedAt, lastHeard: lastHeard) }
        return .alive(lastHeard: lastHeard)
    }

    /// When the primary should next be asked whether it answers; nil while its connection is up (or not known lost).
    var nextProbe: ContinuousClock.Instant? {
        guard let droppedAt, !stopping else { return nil }
        let interval = lost ? Self.lostProbeInterval : Self.probeInterval
        return lastProbe.map { $0 + interval } ?? droppedAt
    }

    /// The verdict as the verdict frame carries it: ages at `now`, so the receiver places them on its own clock.
    func frame(now: ContinuousClock.Instant, sentAt: PostgresTimestamp) -> PrimaryVerdict {
        func millis(_ instant: ContinuousClock.Instant?) -> UInt64? {
            instant.map { UInt64(max(0, (now - $0) / .milliseconds(1))) }
        }
        return PrimaryVerdict(
            state: VerdictDelivery.state(of: verdict), lastHeardAgeMillis: millis(lastHeard), droppedAgeMillis: millis(droppedAt),
            sentAt: sentAt)
    }
}
