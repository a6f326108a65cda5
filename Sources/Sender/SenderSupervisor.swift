import WALCore

/// Decides what the sender does between and around streaming sessions: when to reconnect, how long to back off,
/// when a failure is a set-up mistake that ends the process, and when to acknowledge from the local buffer
/// (`--on-receiver-loss degrade-after`). Pure: events in, actions out; the time comes with the events.
/// `Sender.streamWithRetries` feeds it what happened and carries out what it answers.
struct SenderSupervisor: Sendable {
    enum Peer: Hashable, Sendable {
        case primary
        case receiver
    }

    enum State: Hashable, Sendable {
        /// Nothing attempted yet.
        case starting
        /// A session is being set up: connecting to the primary, then (once it answered) to the receiver.
        case connecting(Peer)
        /// The handshake was accepted and WAL flows to the receiver.
        case streaming
        /// Waiting `backoff` before the next attempt (or trying to degrade). `stillDegraded`: commits acknowledged
        /// from the local buffer are not offsite yet, and degrading was not refused since.
        case retrying(backoff: Duration, stillDegraded: Bool)
        /// Acknowledging commits from the local buffer since `since`.
        case degraded(since: ContinuousClock.Instant)
        /// Degrading was refused (`BufferKeptForReceiver`): commits wait for the receiver.
        case refusingToDegrade
        /// Stopped: retrying cannot help.
        case failed(reason: String)
        /// `--standby-wait`: the source is a standby; shipping starts once it is promoted.
        case waitingForPromotion

        /// The status document's `state`; its values are part of the status contract.
        var status: Status {
            switch self {
            case .starting: .starting
            case .connecting(.primary): .connectingToPrimary
            case .connecting(.receiver): .connectingToReceiver
            case .streaming: .streaming
            case .retrying(_, let stillDegraded): stillDegraded ? .degraded : .retrying
            case .degraded: .degraded
            case .refusingToDegrade: .retrying
            case .failed: .failed
            case .waitingForPromotion: .waitingForPromotion
            }
        }
    }

    /// What the status document says the sender is doing.
    enum Status: String, Sendable {
        case starting
        case connectingToPrimary = "connecting to primary"
        case connectingToReceiver = "connecting to receiver"
        case streaming
        case retrying
        case degraded
        case failed
        case waitingForPromotion = "waiting for promotion"
    }

    enum Event: Sendable {
        /// The primary accepted the replication connection.
        case connected
        /// The receiver accepted the handshake; WAL streams.
        case linked
        /// The primary ended the timeline we streamed; the next handshake moves to the next one.
        case timelineEnded
        /// PostgreSQL failed or went away. `setUpMistake`: the message to stop with if the sender never connected
        /// (an unreachable source, a refused login). `stillExposed`: WAL acknowledged from the buffer is not offsite.
        case primaryLost(setUpMistake: String?, stillExposed: Bool, now: ContinuousClock.Instant)
        /// The receiver side failed: unreachable, link closed or silent, handshake refused. `setUpMistake`: the
        /// message to stop with if no link was ever accepted (TLS set up wrongly).
        case linkLost(setUpMistake: String?, stillExposed: Bool, now: ContinuousClock.Instant)
        /// Degraded mode began acknowledging from the local buffer.
        case acknowledgingFromBuffer(now: ContinuousClock.Instant)
        /// Degraded mode ended because the receiver answers again.
        case receiverBack
        /// Degrading would drop WAL the DR site may lack (`BufferKeptForReceiver`).
        case degradeRefused
        /// Degraded mode could not start or ended with an error.
        case degradeFailed(now: ContinuousClock.Instant)
        /// Something no retry mends; `kind` becomes the exit status.
        case fatal(reason: String, kind: FailureKind)
        /// A wait asked for by `.wait` is over.
        case timePassed(now: ContinuousClock.Instant)
        /// `--standby-wait`: the source answered as a standby.
        case sourceIsStandby
    }

    enum Action: Hashable, Sendable {
        /// Start a session (primary, then receiver) now.
        case reconnectNow
        /// Sleep, then report `.timePassed`.
        case wait(Duration)
        /// Run degraded mode, probing the receiver first after `firstProbeAfter`; then report `.receiverBack`,
        /// `.degradeRefused`, `.degradeFailed` or `.fatal`.
        case enterDegraded(firstProbeAfter: Duration)
        /// Stop the sender with this message.
        case stop(fatal: String, kind: FailureKind)
        /// Carry on with what is under way.
        case none
    }

    static let initialBackoff = Duration.seconds(1)
    /// Each refused attempt to degrade opens connections to the primary: not in a tight loop, nor slower than this.
    static let longestWaitAfterRefusal = Duration.seconds(5)
    /// The shortest wait before the next attempt, however little remains until degrading.
    static let shortestWait = Duration.milliseconds(100)
    /// How often a sender beside a standby asks whether it was promoted.
    static let standbyCheckInterval = Duration.seconds(2)

    let receiverLoss: ReceiverLossPolicy
    /// Whether a local buffer exists (`--buffer-dir` with degrade-after).
    let hasBuffer: Bool
    let maxBackoff: Duration

    private(set) var state = State.starting
    /// The wait after the next failure; doubles up to `maxBackoff`, back to 1 s once linked.
    private(set) var backoff = initialBackoff
    private(set) var everConnected = false
    private(set) var everLinked = false
    /// When the DR site stopped taking WAL, for degrade-after.
    private(set) var receiverLostAt: ContinuousClock.Instant?
    /// The last attempt to degrade was refused: commits wait, though the exposure from before remains.
    private(set) var degradingRefused = false

    init(receiverLoss: ReceiverLossPolicy, hasBuffer: Bool, maxBackoff: Duration) {
        self.receiverLoss = receiverLoss
        self.hasBuffer = hasBuffer
        self.maxBackoff = maxBackoff
    }

    mutating func start() -> Action {
        state = .connecting(.primary)
        return .reconnectNow
    }

    mutating func handle(_ event: Event) -> Action {
        if case .failed = state { return .none }
        switch event {
        case .connected:
            everConnected = true
            state = .connecting(.receiver)
            return .none
        case .linked:
            backoff = Self.initialBackoff
            everLinked = true
            receiverLostAt = nil
            degradingRefused = false
            state = .streaming
            return .none
        case .timelineEnded:
            // Not a failure: the next handshake moves the spool to the next timeline.
            state = .connecting(.primary)
            return .reconnectNow
        case .primaryLost(let setUpMistake, let stillExposed, _):
            if let setUpMistake, !everConnected { return fail(setUpMistake, .setUp) }
            return backOff(for: backoff, stillExposed: stillExposed)
        case .linkLost(let setUpMistake, let stillExposed, let now):
            if let setUpMistake, !everLinked { return fail(setUpMistake, .setUp) }
            guard case .degradeAfter(let after) = receiverLoss, hasBuffer else {
                return backOff(for: backoff, stillExposed: stillExposed)
            }
            let lostAt = receiverLostAt ?? now
            receiverLostAt = lostAt
            let remaining = after - (now - lostAt)
            guard remaining <= .zero else {
                return backOff(for: min(backoff, max(remaining, Self.shortestWait)), stillExposed: stillExposed)
            }
            state = .retrying(backoff: backoff, stillDegraded: stillExposed && !degradingRefused)
            degradingRefused = false
            // The first probe waits `backoff`, so a receiver that accepts connections but refuses the link is not
            // retried in a tight loop.
            return .enterDegraded(firstProbeAfter: backoff)
        case .acknowledgingFromBuffer(let now):
            state = .degraded(since: now)
            return .none
        case .receiverBack:
            grow()
            state = .connecting(.primary)
            return .reconnectNow
        case .degradeRefused:
            degradingRefused = true
            let wait = min(backoff, Self.longestWaitAfterRefusal)
            grow()
            state = .refusingToDegrade
            return .wait(wait)
        case .degradeFailed(let now):
            // Past the allowed time, so the next attempt to degrade comes after the shortest wait.
            var wait = backoff
            if case .degradeAfter(let after) = receiverLoss, let lostAt = receiverLostAt {
                wait = min(wait, max(after - (now - lostAt), Self.shortestWait))
            }
            let stillDegraded =
                switch state {
                case .degraded: true
                case .retrying(_, let stillDegraded): stillDegraded
                default: false
                }
            grow()
            state = .retrying(backoff: wait, stillDegraded: stillDegraded)
            return .wait(wait)
        case .fatal(let reason, let kind):
            return fail(reason, kind)
        case .sourceIsStandby:
            // Not a failure: the source answered, and nothing is owed to a receiver yet.
            everConnected = true
            backoff = Self.initialBackoff
            state = .waitingForPromotion
            return .wait(Self.standbyCheckInterval)
        case .timePassed:
            state = .connecting(.primary)
            return .reconnectNow
        }
    }

    private mutating func backOff(for wait: Duration, stillExposed: Bool) -> Action {
        state = .retrying(backoff: wait, stillDegraded: stillExposed && !degradingRefused)
        grow()
        return .wait(wait)
    }

    private mutating func grow() {
        backoff = min(backoff * 2, maxBackoff)
    }

    private mutating func fail(_ reason: String, _ kind: FailureKind) -> Action {
        state = .failed(reason: reason)
        return .stop(fatal: reason, kind: kind)
    }
}
