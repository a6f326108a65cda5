import ShipProtocol
import WALCore

/// The receiver's side of one link, as a pure state machine: events in, actions out, no I/O. It holds the
/// link's rules (who may ship what, the fence, which frame is allowed when); `Receiver` opens the spool, claims
/// the system's stream, writes frames and logs, and reports back what happened.
///
///     awaitingHello ─hello─▶ openingSpool ─fence passed─▶ claimingStream (stream links) ─▶ findingResumePoint
///                                        └──────────────────────────────────────────────▶ (backup links)
///     findingResumePoint ─welcome─▶ streaming | receivingBackup ─backup end─▶ backupStored
///                                 └─welcome─▶ receivingVerdicts (verdict links, version 2)
///
/// Every refusal ends in `closed`.
struct ReceiverLinkStateMachine: Sendable {
    /// A promotion recorded at the DR site (the spool's FENCED record), in the words the refusal uses.
    struct Fence: Hashable, Sendable {
        /// ISO 8601.
        var promotedAt: String
        var promotedTimeline: UInt32?
        /// Where the record lies: removing it (after a re-seed) lifts the fence.
        var recordPath: String
        /// The promoted timeline and its history, once the promotion recorded them: WAL proven to descend from
        /// it (the new primary's) passes. Nil: everything is refused.
        var lineage: PromotedLineage? = nil
    }

    /// A link let through a fence on the strength of its timeline: what its history files have proven so far.
    /// Until one proves its timeline descends from the promoted one, the link may send history files only; then
    /// WAL only of proven timelines.
    struct FenceCheck: Hashable, Sendable {
        var fence: Fence
        var lineage: PromotedLineage
        var proven: Set<TimeLineID>
    }

    /// The spool step that failed during the handshake.
    enum SpoolStep: Hashable, Sendable {
        case open
        case readFence
        /// Making what an earlier link wrote durable before naming the resume point.
        case makeDurable
    }

    enum State: Hashable, Sendable {
        case awaitingHello
        /// The hello passed; the spool of its system is being opened and its fence read.
        case openingSpool(Hello)
        /// A stream link passed the fence and waits for the system's single stream.
        case claimingStream(Hello)
        case findingResumePoint(Hello)
        case streaming(Hello)
        case receivingBackup(Hello, started: Bool)
        /// The backup is stored; the link only waits for the spool to hold its WAL and reads no more frames.
        case backupStored(Hello)
        /// A verdict link: the sender's verdicts on the primary, each acknowledged.
        case receivingVerdicts(Hello)
        case closed
    }

    enum Action: Hashable, Sendable {
        case openSpool(system: UInt64, segmentSize: WALSegmentSize)
        /// Take the system's single stream (`StreamLinkRegistry`); `acceptedFence` is a fence `--force` overrode.
        case claimStream(acceptedFence: Fence?)
        /// Find the resume point to welcome the sender with; a stream link first makes earlier WAL durable.
        case findResumePoint(makeDurableFirst: Bool, acceptedFence: Fence?)
        case welcome(Welcome)
        case queueWAL(WALData)
        /// `admitsLink`: this history file is the first proof that the link's WAL may pass the fence.
        case queueHistory(HistoryFile, admitsLink: Bool)
        /// Keep the change of mode in the system's audit log.
        case recordMode(ModeChange)
        /// Hold the sender's verdict on the primary for the system, then answer with an ack.
        case recordVerdict(PrimaryVerdict)
        /// Note the primary's end of WAL (stream links), and answer with an ack if the sender asked.
        case keepalive(primaryEnd: LSN?, sendTime: PostgresTimestamp, sendAck: Bool)
        case beginBackup(BackupStart)
        case storeBackupData(BackupData)
        case finishBackup(BackupEnd)
        /// Send the refusal frame, then close.
        case refuse(Refusal)
        /// Close without a frame: a peer that did not begin with a hello may not speak the protocol at all.
        case closeWithoutAnswer(Refusal)
        case none
    }

    /// `--allow-source` (only with TLS): a client certificate name may ship only the system bound to it.
    let allowedSources: [String: UInt64]
    /// `--force`: accept WAL and backups of a fenced system.
    let acceptFenced: Bool
    let receiverName: String
    private(set) var state = State.awaitingHello
    /// Set when the link passed a fence by its timeline: its frames are checked against the promoted lineage.
    private(set) var fenceCheck: FenceCheck?

    init(allowedSources: [String: UInt64], acceptFenced: Bool, receiverName: String) {
        self.allowedSources = allowedSources
        self.acceptFenced = acceptFenced
        self.receiverName = receiverName
    }

    // MARK: - Handshake

    /// The link's first frame; `certificateName` is the client certificate's name when the link runs TLS.
    mutating func firstFrameReceived(_ message: ShipMessage, certificateName: String?) -> Action {
        guard case .awaitingHello = state else { return refuse(.protocolViolation, "a second hello on one link") }
        guard case .hello(let hello) = message else {
            state = .closed
            return .closeWithoutAnswer(
                Refusal(code: .protocolViolation, message: "expected a hello frame first, got \(message.kind)"))
        }
        if !allowedSources.isEmpty {
            guard let name = certificateName, let bound = allowedSources[name] else {
                return refuse(
                    .sourceNotAllowed,
                    "the sender's certificate \"\(certificateName ?? "without a name")\" is not allowed to ship here (hint: add --allow-source \(certificateName ?? "NAME")=\(hello.systemIdentifier) to walship receive)"
                )
            }
            guard bound == hello.systemIdentifier else {
                return refuse(
                    .sourceNotAllowed,
                    "the sender's certificate \"\(name)\" may ship system \(bound) only, but it offered system \(hello.systemIdentifier) (hint: is this sender pointed at the right primary? else fix --allow-source \(name)=\(hello.systemIdentifier))"
                )
            }
        }
        if hello.role == .verdict, hello.protocolVersion < 2 {
            return refuse(
                .protocolViolation, "a verdict link needs ship protocol version 2, the sender speaks \(hello.protocolVersion)")
        }
        switch ReceiverHandshake.validate(hello) {
        case .failure(let refusal):
            state = .closed
            return .refuse(refusal)
        case .success(let segmentSize):
            state = .openingSpool(hello)
            return .openSpool(system: hello.systemIdentifier, segmentSize: segmentSize)
        }
    }

    /// The system's spool is open; `fence` is its FENCED record, if any. Every link, backups included, passes the
    /// fence: after a promotion nothing from the old primary may land in the spool. Only a stream link offering the
    /// promoted timeline or a newer one may pass, on condition that the history files it sends prove its
    /// timeline descends from the promoted one before it sends anything else (`fenceCheck`): the new primary's,
    /// after a switchover back. A backup link of such a timeline passes the same way: its history file must
    /// prove its timeline before its backup starts. A verdict link of such a timeline is taken: it stores nothing.
    mutating func spoolOpened(fence: Fence?) -> Action {
        guard case .openingSpool(let hello) = state else { return outOfOrder("spool opened") }
        var passed: Fence?
        if let fence, !acceptFenced {
            switch FencePassage.judge(lineage: fence.lineage, offered: hello.timeline, history: nil) {
            case .needsHistory where hello.role == .stream || hello.role == .backup:
                guard let lineage = fence.lineage else { preconditionFailure("a fence passed without a lineage") }
                fenceCheck = FenceCheck(fence: fence, lineage: lineage, proven: [])
                passed = fence
            case .needsHistory where hello.role == .verdict:
                // A verdict lands nothing in the spool; the new primary's sender reports through it while its stream
                // is down, and a refusal would raise the alert meant for the old primary.
                passed = fence
            case .descends, .needsHistory:
                return refuseFenced(
                    fence, hello: hello,
                    reason:
                        "only a stream or backup link can prove with history files that its timeline descends from the promoted timeline"
                )
            case .refused(let reason):
                return refuseFenced(fence, hello: hello, reason: fence.lineage == nil ? nil : reason)
            }
        }
        // A fence passed by lineage needs no warning: only --force's acceptance is logged as such.
        let acceptedFence = passed == nil ? fence : nil
        switch hello.role {
        case .stream:
            state = .claimingStream(hello)
            return .claimStream(acceptedFence: acceptedFence)
        case .backup, .verdict:
            state = .findingResumePoint(hello)
            return .findResumePoint(makeDurableFirst: false, acceptedFence: acceptedFence)
        }
    }

    /// Refusal 10. `reason` says why a fence with a lineage did not let the link through; a fence without one
    /// refuses everything and needs no reason.
    private mutating func refuseFenced(_ fence: Fence, hello: Hello, reason: String?) -> Action {
        refuse(
            .fenced,
            "system \(hello.systemIdentifier) was promoted at the DR site at \(fence.promotedAt) (timeline \(fence.promotedTimeline.map(String.init) ?? "?")); \(hello.role.refusedThing) from the old primary (sender \(hello.senderName), timeline \(hello.timeline)) is refused\(reason.map { ": " + $0 } ?? ""). Hint: re-seed the DR site and remove \(fence.recordPath), or restart walship receive with --force to accept it anyway"
        )
    }

    /// A frame of a stream link let through the fence on condition (`fenceCheck`): the refusal if it breaks the
    /// condition, the history file's action if it proves a timeline, nil if it may go on as on any link.
    private mutating func checkedAtFence(_ message: ShipMessage, hello: Hello) -> Action? {
        guard var check = fenceCheck else { return nil }
        switch message {
        case .history(let file):
            guard let text = String(validating: file.content.readableBytesView, as: UTF8.self),
                let entries = try? parseTimelineHistory(text)
            else {
                return refuseFenced(
                    check.fence, hello: hello, reason: "the history file of timeline \(file.timeline) cannot be read")
            }
            switch FencePassage.judge(lineage: check.lineage, offered: file.timeline, history: entries) {
            case .descends:
                let first = check.proven.isEmpty
                check.proven.insert(file.timeline)
                fenceCheck = check
                return .queueHistory(file, admitsLink: first)
            case .needsHistory:
                preconditionFailure("a fence judged a history file as missing")
            case .refused(let reason):
                return refuseFenced(check.fence, hello: hello, reason: reason)
            }
        case .walData(let data):
            guard check.proven.contains(data.timeline) else {
                return refuseFenced(
                    check.fence, hello: hello,
                    reason:
                        "WAL of timeline \(data.timeline) came without a history file proving it descends from the promoted timeline \(check.lineage.timeline)"
                )
            }
            return nil
        case .refusal:
            return nil
        case .hello, .welcome, .ack, .keepalive, .mode, .backupStart, .backupData, .backupEnd, .backupStatus,
            .primaryVerdict:
            guard !check.proven.isEmpty else {
                return refuseFenced(
                    check.fence, hello: hello,
                    reason:
                        "it sent \(message.kind) before a history file proving its timeline descends from the promoted timeline \(check.lineage.timeline)"
                )
            }
            return nil
        }
    }

    /// The system's single stream is this link's now.
    mutating func streamClaimed() -> Action {
        guard case .claimingStream(let hello) = state else { return outOfOrder("stream claimed") }
        state = .findingResumePoint(hello)
        return .findResumePoint(makeDurableFirst: true, acceptedFence: nil)
    }

    /// Another link holds the system's stream and is alive.
    mutating func streamClaimRefused(_ refusal: Refusal) -> Action {
        guard case .claimingStream = state else { return outOfOrder("stream claim refused") }
        state = .closed
        return .refuse(refusal)
    }

    mutating func resumePointFound(durable: LSN, timeline: TimeLineID) -> Action {
        guard case .findingResumePoint(let hello) = state else { return outOfOrder("resume point found") }
        switch hello.role {
        case .stream: state = .streaming(hello)
        case .backup: state = .receivingBackup(hello, started: false)
        case .verdict: state = .receivingVerdicts(hello)
        }
        return .welcome(
            Welcome(
                protocolVersion: hello.protocolVersion, resumeLSN: durable, resumeTimeline: timeline,
                receiverName: receiverName))
    }

    mutating func spoolFailed(_ step: SpoolStep, error: String) -> Action {
        let system: UInt64
        switch state {
        case .openingSpool(let hello), .claimingStream(let hello), .findingResumePoint(let hello): system = hello.systemIdentifier
        case .awaitingHello, .streaming, .receivingBackup, .backupStored, .receivingVerdicts, .closed:
            return outOfOrder("spool failure")
        }
        let message =
            switch step {
            case .open: "cannot open the spool for system \(system): \(error)"
            case .readFence: "cannot read the fence of system \(system): \(error)"
            case .makeDurable: "the spool for system \(system) cannot be written: \(error)"
            }
        return refuse(.spoolFailure, message)
    }

    // MARK: - Frames

    /// Any frame after the welcome.
    mutating func frameReceived(_ message: ShipMessage) -> Action {
        switch state {
        case .streaming(let hello):
            if let verdict = checkedAtFence(message, hello: hello) { return verdict }
            return streamFrame(message)
        case .receivingBackup(let hello, let started):
            return backupFrame(message, hello: hello, started: started)
        case .receivingVerdicts:
            return verdictFrame(message)
        case .backupStored, .closed:
            return .none
        case .awaitingHello, .openingSpool, .claimingStream, .findingResumePoint:
            return refuse(.protocolViolation, "unexpected \(message.kind) frame before the receiver's welcome")
        }
    }

    private mutating func streamFrame(_ message: ShipMessage) -> Action {
        switch message {
        case .walData(let data):
            return .queueWAL(data)
        case .keepalive(let keepalive):
            return .keepalive(
                primaryEnd: keepalive.primaryEndLSN.isValid ? keepalive.primaryEndLSN : nil,
                sendTime: keepalive.sendTime, sendAck: keepalive.replyRequested)
        case .history(let history):
            return .queueHistory(history, admitsLink: false)
        case .mode(let change):
            return .recordMode(change)
        case .refusal(let refusal):
            return refuse(refusal.code, "the sender ended the link: \(refusal.message)")
        case .hello, .welcome, .ack, .backupStart, .backupData, .backupEnd, .backupStatus, .primaryVerdict:
            return refuse(.protocolViolation, "unexpected \(message.kind) frame on a streaming link")
        }
    }

    private mutating func verdictFrame(_ message: ShipMessage) -> Action {
        switch message {
        case .primaryVerdict(let verdict):
            return .recordVerdict(verdict)
        case .keepalive(let keepalive):
            return .keepalive(primaryEnd: nil, sendTime: keepalive.sendTime, sendAck: keepalive.replyRequested)
        case .refusal(let refusal):
            return refuse(refusal.code, "the sender ended the link: \(refusal.message)")
        case .hello, .welcome, .walData, .ack, .history, .mode, .backupStart, .backupData, .backupEnd, .backupStatus:
            return refuse(.protocolViolation, "unexpected \(message.kind) frame on a verdict link")
        }
    }

    private mutating func backupFrame(_ message: ShipMessage, hello: Hello, started: Bool) -> Action {
        switch message {
        case .history:
            guard !started else { return refuse(.protocolViolation, "a history file after the backup started") }
            // Proof for the fence only: the spool takes history files from the stream, which brings the WAL too.
            guard fenceCheck != nil, let verdict = checkedAtFence(message, hello: hello) else { return .none }
            if case .queueHistory = verdict { return .none }
            return verdict
        case .backupStart(let start):
            guard !started else { return refuse(.protocolViolation, "a second backup start on one link") }
            if let check = fenceCheck, !check.proven.contains(start.timeline) {
                return refuseFenced(
                    check.fence, hello: hello,
                    reason:
                        "the backup of timeline \(start.timeline) started without a history file proving it descends from the promoted timeline \(check.lineage.timeline)"
                )
            }
            state = .receivingBackup(hello, started: true)
            return .beginBackup(start)
        case .backupData(let data):
            guard started else { return refuse(.protocolViolation, "backup data before its start") }
            return .storeBackupData(data)
        case .backupEnd(let end):
            guard started else { return refuse(.protocolViolation, "backup end before its start") }
            state = .backupStored(hello)
            return .finishBackup(end)
        case .keepalive(let keepalive):
            // The stream link reports the primary's position; a backup link's keepalive only asks for life.
            return .keepalive(primaryEnd: nil, sendTime: keepalive.sendTime, sendAck: keepalive.replyRequested)
        case .hello, .welcome, .refusal, .walData, .ack, .backupStatus, .mode, .primaryVerdict:
            return refuse(.protocolViolation, "unexpected \(message.kind) frame on a backup link")
        }
    }

    /// The connection ended (the sender closed it, the link timed out, or the receiver closed it).
    mutating func linkEnded() {
        state = .closed
    }

    private mutating func refuse(_ code: Refusal.Code, _ message: String) -> Action {
        state = .closed
        return .refuse(Refusal(code: code, message: message))
    }

    private mutating func outOfOrder(_ event: String) -> Action {
        if case .closed = state { return .none }
        return refuse(.protocolViolation, "internal error: \(event) while \(state)")
    }
}

extension LinkRole {
    /// What a fence refuses from a sender of this role, in the refusal's words.
    var refusedThing: String {
        switch self {
        case .stream: "WAL"
        case .backup: "a base backup"
        case .verdict: "a verdict on the primary"
        }
    }
}
