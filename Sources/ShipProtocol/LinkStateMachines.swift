import WALCore

/// What the sender knows about its primary when the receiver answers.
public struct PrimaryIdentity: Hashable, Sendable {
    public var systemIdentifier: UInt64
    public var timeline: TimeLineID
    public var flushLSN: LSN
    public var segmentSize: WALSegmentSize

    public init(systemIdentifier: UInt64, timeline: TimeLineID, flushLSN: LSN, segmentSize: WALSegmentSize) {
        self.systemIdentifier = systemIdentifier
        self.timeline = timeline
        self.flushLSN = flushLSN
        self.segmentSize = segmentSize
    }
}

/// The sender's side of one link, as a pure state machine: events in, actions out, no I/O.
public struct SenderLinkStateMachine: Sendable {
    public enum State: Hashable, Sendable {
        case awaitingWelcome
        case streaming(timeline: TimeLineID, sent: LSN, written: LSN, durable: LSN)
        case closed
    }

    public enum Action: Hashable, Sendable {
        /// Start replication at `start` on `timeline`; report `resume` as written/flushed until the first ack.
        case startStreaming(start: LSN, timeline: TimeLineID, resume: LSN)
        /// Send the history files up to `to`, then start replication at `start` on timeline `to`.
        case switchTimeline(to: TimeLineID, start: LSN, fork: LSN, beyondFork: UInt64)
        /// Report these positions to the primary (write, flush, apply).
        case reportFeedback(written: LSN, durable: LSN, replayed: LSN)
        case none
        /// End the link; `fatal` when retrying cannot help.
        case close(reason: String, fatal: Bool)
    }

    public private(set) var state = State.awaitingWelcome

    public init() {}

    /// The receiver's first answer. Its durable end wins over the slot, so nothing it lacks is skipped; an empty
    /// spool starts at the start of the segment holding the slot's restart_lsn, so every stored segment is whole.
    public mutating func firstMessageReceived(
        _ message: ShipMessage, primary: PrimaryIdentity, slotRestartLSN: LSN?,
        history: [TimelineHistoryEntry] = []
    ) -> Action {
        guard case .awaitingWelcome = state else { return close("unexpected handshake in state \(state)") }
        switch message {
        case .welcome(let welcome):
            if welcome.protocolVersion != shipProtocolVersion {
                return close(
                    "the receiver answered in ship protocol version \(welcome.protocolVersion), this sender speaks \(shipProtocolVersion) (hint: upgrade walship at the DR site first, then the senders; docs/runbook.md, \"Upgrading\")"
                )
            }
            if welcome.resumeLSN.isValid {
                if welcome.resumeTimeline < primary.timeline {
                    return followTimeline(welcome: welcome, primary: primary, history: history)
                }
                guard welcome.resumeTimeline == primary.timeline else {
                    return close(
                        "the spool holds timeline \(welcome.resumeTimeline), newer than the primary's timeline \(primary.timeline); is the source the right server?",
                        fatal: true)
                }
                guard welcome.resumeLSN <= primary.flushLSN else {
                    return close(
                        "the receiver holds WAL up to \(welcome.resumeLSN) but the primary's WAL ends at \(primary.flushLSN); is the source the same database system as before?"
                    )
                }
                state = .streaming(
                    timeline: welcome.resumeTimeline, sent: welcome.resumeLSN, written: welcome.resumeLSN,
                    durable: welcome.resumeLSN)
                return .startStreaming(start: welcome.resumeLSN, timeline: welcome.resumeTimeline, resume: welcome.resumeLSN)
            }
            var start = primary.segmentSize.segmentStart(of: slotRestartLSN ?? primary.flushLSN)
            // A slot reserved before the server's timeline began (on a standby, before its promotion) points into
            // an ancestor's files, which a standby restored from an archive may never have had. An empty spool
            // starts with the server's own timeline instead: its first file holds the ancestor's WAL up to the
            // switch point, and whoever follows this spool was on the ancestor until there.
            if let begun = primary.segmentSize.timelineBegins(history: history),
                WALCore.timeline(
                    ofSegmentAt: start, history: history, current: primary.timeline, segmentSize: primary.segmentSize)
                    != primary.timeline
            {
                start = begun
            }
            state = .streaming(timeline: primary.timeline, sent: start, written: .invalid, durable: .invalid)
            return .startStreaming(start: start, timeline: primary.timeline, resume: .invalid)
        case .refusal(let refusal):
            // A version refusal is not fatal: an upgrade at the DR site mends it, and a synchronous sender that
            // stopped would leave the primary's commits waiting with no one retrying.
            return close("the receiver refused the link: \(refusal.message)")
        case .hello, .walData, .ack, .keepalive, .history, .backupStart, .backupData, .backupEnd, .backupStatus, .mode,
            .primaryVerdict:
            return close("the receiver answered the handshake with \(message.kind)")
        }
    }

    /// The primary moved to a newer timeline (a failover at the primary site). `history` is the primary's
    /// history file for its current timeline. While the spool lacks WAL of its own timeline up to the fork,
    /// stream that timeline (the server ends it at the fork); once it has it, continue on the child timeline
    /// from the start of the fork's segment. WAL the spool holds beyond the fork was never on the new primary:
    /// the spool keeps it aside, and it is never served on the new timeline.
    private mutating func followTimeline(welcome: Welcome, primary: PrimaryIdentity, history: [TimelineHistoryEntry]) -> Action {
        guard let (fork, child) = timelineEnd(of: welcome.resumeTimeline, history: history, current: primary.timeline) else {
            return close(
                "the spool's timeline \(welcome.resumeTimeline) is not in the history of the primary's timeline \(primary.timeline); the DR site needs a re-seed from this primary",
                fatal: true)
        }
        if welcome.resumeLSN < fork {
            state = .streaming(
                timeline: welcome.resumeTimeline, sent: welcome.resumeLSN, written: welcome.resumeLSN,
                durable: welcome.resumeLSN)
            return .startStreaming(start: welcome.resumeLSN, timeline: welcome.resumeTimeline, resume: welcome.resumeLSN)
        }
        let start = primary.segmentSize.segmentStart(of: fork)
        // Positions restart on the child timeline below what the receiver acknowledged before: report nothing
        // until its first ack on the new timeline.
        state = .streaming(timeline: child, sent: start, written: .invalid, durable: .invalid)
        return .switchTimeline(to: child, start: start, fork: fork, beyondFork: welcome.resumeLSN.bytesAfter(fork))
    }

    /// WAL up to `end` was handed to the link.
    public mutating func walSent(upTo end: LSN) {
        guard case .streaming(let tli, let sent, let written, let durable) = state, end > sent else { return }
        state = .streaming(timeline: tli, sent: end, written: written, durable: durable)
    }

    /// Any later frame from the receiver. Acks must be consistent: durable ≤ written ≤ sent, never going back.
    public mutating func messageReceived(_ message: ShipMessage) -> Action {
        guard case .streaming(let tli, let sent, let written, let durable) = state else {
            return close("frame \(message.kind) outside streaming")
        }
        switch message {
        case .ack(let ack):
            // Positions only compare within one timeline; an ack still naming the timeline we just left says
            // nothing about the new one.
            if ack.timeline < tli { return .none }
            guard ack.timeline == tli else {
                return close("the receiver acknowledged timeline \(ack.timeline) while we stream timeline \(tli)")
            }
            guard ack.durableLSN <= ack.writtenLSN else {
                return close("the receiver reported durable \(ack.durableLSN) beyond written \(ack.writtenLSN)")
            }
            guard ack.writtenLSN <= sent else {
                return close("the receiver acknowledged \(ack.writtenLSN), beyond the \(sent) we sent")
            }
            guard ack.durableLSN >= durable, ack.writtenLSN >= written else {
                return close("the receiver's acknowledged position went backwards (\(durable) → \(ack.durableLSN))")
            }
            state = .streaming(timeline: tli, sent: sent, written: ack.writtenLSN, durable: ack.durableLSN)
            return .reportFeedback(written: ack.writtenLSN, durable: ack.durableLSN, replayed: ack.replayedLSN)
        case .refusal(let refusal):
            return close("the receiver ended the link: \(refusal.message)")
        case .hello, .welcome, .walData, .keepalive, .history, .backupStart, .backupData, .backupEnd, .backupStatus, .mode,
            .primaryVerdict:
            return close("unexpected \(message.kind) frame from the receiver")
        }
    }

    private mutating func close(_ reason: String, fatal: Bool = false) -> Action {
        state = .closed
        return .close(reason: reason, fatal: fatal)
    }
}

/// Checks a sender's hello before anything is opened for it.
public enum ReceiverHandshake {
    public static func validate(_ hello: Hello) -> Result<WALSegmentSize, Refusal> {
        guard (oldestShipProtocolVersion...shipProtocolVersion).contains(hello.protocolVersion) else {
            return .failure(
                Refusal(
                    code: .unsupportedVersion,
                    message:
                        "the receiver speaks ship protocol versions \(oldestShipProtocolVersion) to \(shipProtocolVersion), the sender \(hello.protocolVersion) (hint: upgrade walship at the DR site first, then the senders; docs/runbook.md, \"Upgrading\")"
                ))
        }
        guard let size = WALSegmentSize(bytes: UInt64(hello.walSegmentSize)) else {
            return .failure(Refusal(code: .wrongSegmentSize, message: "invalid WAL segment size \(hello.walSegmentSize)"))
        }
        guard hello.systemIdentifier != 0 else {
            return .failure(Refusal(code: .protocolViolation, message: "system identifier 0 is not a PostgreSQL system"))
        }
        return .success(size)
    }
}

/// One streaming link per source system. A newcomer replaces the current link only once that link has been
/// silent past the link timeout (proven dead); otherwise it is refused. Generic over the link's handle so the
/// rule is testable without sockets.
public struct StreamLinkRegistry<Handle: Sendable>: Sendable {
    public struct Link: Sendable {
        public var id: Int
        public var peer: String
        public var senderName: String
        public var synchronous: Bool
        public var handle: Handle
        public var lastFrame: ContinuousClock.Instant

        public init(
            id: Int, peer: String, senderName: String, synchronous: Bool, handle: Handle,
            lastFrame: ContinuousClock.Instant
        ) {
            self.id = id
            self.peer = peer
            self.senderName = senderName
            self.synchronous = synchronous
            self.handle = handle
            self.lastFrame = lastFrame
        }
    }

    public enum Claim: Sendable {
        case accepted(replacing: Handle?)
        case refused(Refusal)
    }

    public private(set) var links: [UInt64: Link] = [:]
    public let timeout: Duration

    public init(timeout: Duration) { self.timeout = timeout }

    public mutating func claim(system: UInt64, link: Link, now: ContinuousClock.Instant) -> Claim {
        if let existing = links[system] {
            let silence = now - existing.lastFrame
            if silence < timeout {
                return .refused(
                    Refusal(
                        code: .streamAlreadyActive,
                        message:
                            "system \(system) is already streaming from \(existing.peer) (last frame \(silence.components.seconds) s ago); a new link is accepted once that one has been silent for \(timeout.components.seconds) s"
                    ))
            }
        }
        let replaced = links[system]?.handle
        links[system] = link
        return .accepted(replacing: replaced)
    }

    public mutating func touch(system: UInt64, id: Int, now: ContinuousClock.Instant) {
        if links[system]?.id == id { links[system]?.lastFrame = now }
    }

    public mutating func release(system: UInt64, id: Int) {
        if links[system]?.id == id { links[system] = nil }
    }
}
