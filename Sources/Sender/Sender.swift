import Foundation
import LZ4Codec
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PGReplication
import ServiceLifecycle
import ShipProtocol
import ShipTLS
import Spool
import StatusModel
import Synchronization
import WALCore

public struct SenderConfiguration: Sendable {
    public var source: Conninfo
    public var receiverHost: String
    public var receiverPort: Int
    public var slot: String
    public var createSlot: Bool
    public var applicationName: String
    public var synchronous: Bool
    /// Silence on the link for this long means the receiver is dead or the network stalled.
    public var linkTimeout: Duration = .seconds(30)
    public var keepaliveInterval: Duration = .seconds(5)
    /// Longest gap between standby status updates to the primary.
    public var statusInterval: Duration = .seconds(10)
    public var slotCheckInterval: Duration = .seconds(10)
    /// How often the primary's treatment of this sender (`pg_stat_replication.sync_state`) is read.
    public var modeCheckInterval: Duration = .seconds(2)
    public var maxBackoff: Duration = .seconds(30)
    /// Mutual TLS on the link; nil only for a deliberately plaintext link (--insecure).
    public var tls: ClientTLS?
    /// What synchronous mode does while the DR site cannot take WAL.
    public var receiverLoss: ReceiverLossPolicy = .block
    /// The local durable buffer for `.degradeAfter`.
    public var bufferDirectory: String?
    /// How often a degraded sender tries to reach the receiver again.
    public var receiverProbeInterval: Duration = .seconds(2)
    /// How hard WAL frames are compressed (--compression).
    public var compression: CompressionPolicy.Mode = .auto
    /// On a graceful stop, the longest wait for the receiver to acknowledge the WAL already read.
    public var drainTimeout: Duration = .seconds(5)
    /// Beside a standby, wait until it is promoted instead of streaming from it (a site that runs both ends).
    public var standbyWait = false
    /// The spool of this site's own `walship receive` (read only): WAL of a timeline the primary has left is
    /// shipped from there, where it is kept whole, rather than from pg_wal, which recycles it.
    public var siteSpool: String?

    public init(
        source: Conninfo, receiverHost: String, receiverPort: Int, slot: String, createSlot: Bool,
        applicationName: String, synchronous: Bool
    ) {
        self.source = source
        self.receiverHost = receiverHost
        self.receiverPort = receiverPort
        self.slot = slot
        self.createSlot = createSlot
        self.applicationName = applicationName
        self.synchronous = synchronous
    }
}

/// A condition retrying cannot fix; the sender stops with this message.
public struct SenderFatalError: ClassifiedFailure, CustomStringConvertible {
    public let description: String
    public let failureKind: FailureKind
    public init(_ description: String, kind: FailureKind = .runtime) {
        self.description = description
        self.failureKind = kind
    }
}

/// The sidecar beside the primary: streams WAL from a replication slot to the receiver and reports to the
/// primary only what the receiver acknowledged (written, and durable as flush). A service: a graceful shutdown
/// drains the stream (`StreamGate.requestDrain`) and ends `run` normally.
public final class Sender: Service {
    let config: SenderConfiguration
    let logger: Logger
    let statusBox: Mutex<SenderState>
    let startedAt = Date()
    private let problems = Mutex<[String: String]>([:])
    /// Present with `--on-receiver-loss degrade-after`.
    let buffer: LocalBuffer?
    /// The latest file job on the local buffer handed off by the event loop; each job waits for the one before.
    private let bufferChores = Mutex<Task<Void, Never>?>(nil)
    /// How the primary treats this sender, and the changes the receiver has yet to be told.
    let modes: Mutex<ReplicationModeTracker>
    /// Whether the primary is lost (`PrimaryWatch`), and what the receiver was last told of it.
    let primaryWatch = Mutex(PrimaryWatch())
    private let verdictDelivery = Mutex(VerdictDelivery())
    /// The primary's identity from the last connection: what a verdict link's hello names.
    private let lastIdentity = Mutex<SystemIdentity?>(nil)

    public init(configuration: SenderConfiguration, logger: Logger) throws {
        self.config = configuration
        self.logger = logger
        self.statusBox = Mutex(SenderState(slot: configuration.slot))
        self.modes = Mutex(
            ReplicationModeTracker(
                synchronousRequested: configuration.synchronous, applicationName: configuration.applicationName))
        if case .degradeAfter = configuration.receiverLoss {
            guard configuration.synchronous else {
                throw SenderFatalError(
                    "--on-receiver-loss degrade-after only applies to synchronous mode (hint: add --sync, or drop the option: without --sync commits never wait for the DR site)",
                    kind: .setUp)
            }
            guard let directory = configuration.bufferDirectory else {
                throw SenderFatalError(
                    "--on-receiver-loss degrade-after needs --buffer-dir DIR, a directory on durable local storage where WAL acknowledged without the DR site is kept until the receiver has it",
                    kind: .setUp)
            }
            buffer = try LocalBuffer(directory: directory, logger: logger)
        } else {
            buffer = nil
        }
    }

    /// The status document (without alerts and health, which the monitor adds).
    public var status: StatusDocument {
        let now = ContinuousClock.now
        let s = statusBox.withLock { $0 }
        let system = StatusDocument.SystemStatus(
            systemIdentifier: s.systemIdentifier, timeline: s.timeline,
            link: .init(
                connected: s.state == .streaming, peer: "\(config.receiverHost):\(config.receiverPort)",
                senderName: config.applicationName, synchronous: config.synchronous, connectedAt: s.connectedSince,
                disconnectedSince: s.disconnectedSince,
                lastMessageAgeSeconds: s.receiverLastAckAt.map { roundedSeconds(now - $0) },
                lastPrimaryMessageAgeSeconds: s.primaryLastMessageAt.map { roundedSeconds(now - $0) }),
            chain: s.chain(now: now), clockSkewSeconds: s.lag.clockSkewSeconds)
        return StatusDocument(
            role: "sender", version: walshipVersion, host: ProcessInfo.processInfo.hostName, generatedAt: Date(),
            process: .init(
                pid: ProcessInfo.processInfo.processIdentifier, startedAt: startedAt,
                residentMemoryBytes: residentMemoryBytes()),
            state: s.state.rawValue, stateSince: s.stateSince, lastError: s.lastError, systems: [system],
            sender: .init(
                source: config.source.description, receiver: "\(config.receiverHost):\(config.receiverPort)",
                synchronous: config.synchronous, applicationName: config.applicationName,
                walBytesSent: s.walBytesSent, walFramesSent: s.walFramesSent, wireBytesSent: s.wireBytesSent,
                compression: config.compression.description, walFramesHighCompression: s.walFramesHighCompression,
                slot: s.slot,
                receiverLossPolicy: config.synchronous ? config.receiverLoss.description : nil,
                degraded: buffer == nil ? nil : s.degradedSince != nil, degradedSince: s.degradedSince,
                rpoExposure: s.rpoExposure(now: now), mode: modeStatus))
    }

    /// The mode as the status shows it; nil until the first reading.
    var modeStatus: StatusDocument.ModeStatus? {
        let tracker = modes.withLock { $0 }
        guard let current = tracker.current, let since = tracker.since else { return nil }
        return StatusDocument.ModeStatus(
            mode: current.mode.rawValue, since: Date(timeIntervalSince1970: since.unixSeconds),
            synchronousRequested: config.synchronous, syncState: current.syncState.isEmpty ? nil : current.syncState,
            receiverLoss: receiverLossRule.description,
            notHonouredSince: tracker.notHonouredSince.map { Date(timeIntervalSince1970: $0.unixSeconds) },
            detail: current.detail)
    }

    /// The receiver-loss policy as the link's hello states it.
    var receiverLossRule: ReceiverLossRule {
        guard config.synchronous else { return .asynchronous }
        switch config.receiverLoss {
        case .block: return .block
        case .degradeAfter(let after): return .degradeAfter(seconds: after / .seconds(1))
        }
    }

    /// Runs until cancelled, a graceful shutdown, or a fatal condition (invalidated slot, gap, wrong server version...).
    public func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.watchSlot() }
            group.addTask { try await self.watchReplicationMode() }
            group.addTask { try await self.watchPrimary() }
            group.addTask { try await self.streamWithRetries() }
            try await group.next()
            group.cancelAll()
        }
    }

    // MARK: - Streaming with reconnects

    /// Carries out what `SenderSupervisor` decides, and tells it what happened.
    private func streamWithRetries() async throws {
        var supervisor = SenderSupervisor(
            receiverLoss: config.receiverLoss, hasBuffer: buffer != nil, maxBackoff: config.maxBackoff)
        var action = supervisor.start()
        publish(supervisor.state)
        // Said once per wait beside a standby, not at every check.
        var announcedStandbyWait = false
        while true {
            try Task.checkCancellation()
            // A graceful shutdown: the session drained (or none ran); a stop is not a failure.
            if Task.isShuttingDownGracefully {
                await reportStopping()
                logStopped()
                return
            }
            switch action {
            case .reconnectNow:
                do {
                    try await streamOnce(
                        onConnected: {
                            primaryWatch.withLock { $0.answered(at: .now) }
                            advance(&supervisor, .connected)
                        },
                        onStreaming: {
                            announcedStandbyWait = false
                            advance(&supervisor, .linked)
                        })
                    action = advance(
                        &supervisor, .linkLost(setUpMistake: nil, stillExposed: stillExposed, now: .now),
                        error: "the session ended")
                } catch is SenderStopping {
                    continue
                } catch is SourceIsStandby {
                    if !announcedStandbyWait {
                        announcedStandbyWait = true
                        logger.notice(
                            "the source is a standby: waiting for its promotion before shipping (--standby-wait)",
                            metadata: ["walship.source": "\(config.source)"])
                    }
                    action = advance(&supervisor, .sourceIsStandby)
                } catch let error as SenderFatalError {
                    action = advance(
                        &supervisor, .fatal(reason: error.description, kind: error.failureKind), error: error.description)
                } catch is CancellationError {
                    throw CancellationError()
                } catch let ended as TimelineEnded {
                    logger.notice(
                        "the primary ended our timeline; switching",
                        metadata: [
                            "walship.timeline": "\(ended.timeline)", "walship.next_timeline": "\(ended.next)",
                            "walship.at": "\(ended.at)",
                        ])
                    action = advance(&supervisor, .timelineEnded)
                } catch {
                    if Task.isCancelled { throw CancellationError() }
                    // The session ended while it drained (the receiver closed first, say): still a stop, no retry.
                    if Task.isShuttingDownGracefully { continue }
                    notePrimaryFailure(error)
                    let text = "\(error)"
                    action = advance(&supervisor, sessionFailure(error), error: text)
                    if case .stop = action {} else { noteProblem("stream", text, "streaming stopped; retrying with backoff") }
                }
            case .wait(let duration):
                do {
                    try await cancelWhenGracefulShutdown { try await Task.sleep(for: duration) }
                } catch is CancellationError where Task.isShuttingDownGracefully {
                    continue
                }
                action = advance(&supervisor, .timePassed(now: .now))
            case .enterDegraded(let firstProbeAfter):
                do {
                    try await runDegraded(firstProbeAfter: firstProbeAfter) {
                        advance(&supervisor, .acknowledgingFromBuffer(now: .now))
                    }
                    // Drained by a graceful shutdown: the receiver is not back, the loop's top stops.
                    if Task.isShuttingDownGracefully { continue }
                    action = advance(&supervisor, .receiverBack)
                } catch let error as SenderFatalError {
                    action = advance(
                        &supervisor, .fatal(reason: error.description, kind: error.failureKind), error: error.description)
                } catch is CancellationError {
                    throw CancellationError()
                } catch let kept as BufferKeptForReceiver {
                    noteProblem("degraded", "\(kept)", "cannot acknowledge from the local buffer; commits wait")
                    action = advance(&supervisor, .degradeRefused, error: kept.description)
                } catch {
                    notePrimaryFailure(error)
                    noteProblem("degraded", "\(error)", "cannot acknowledge from the local buffer; commits wait")
                    action = advance(&supervisor, .degradeFailed(now: .now))
                }
            case .stop(let reason, let kind):
                throw SenderFatalError(reason, kind: kind)
            case .none:
                preconditionFailure("the supervisor left the sender with nothing to do in state \(supervisor.state)")
            }
        }
    }

    /// The one line a graceful stop ends with: how far WAL was read and sent, and how much of it the receiver (or the
    /// local buffer) holds durably, which is what the primary's slot was last told.
    private func logStopped() {
        let (sent, durable, fromBuffer) = statusBox.withLock { ($0.sent, $0.receiverDurable, $0.acknowledgedFromBuffer) }
        var metadata: Logger.Metadata = [
            "walship.sent": "\(sent.isValid ? "\(sent)" : "none")",
            "walship.durable": "\(durable.isValid ? "\(durable)" : "unknown")",
        ]
        if fromBuffer.isValid { metadata["walship.acknowledged_from_buffer"] = "\(fromBuffer)" }
        if config.synchronous {
            metadata["walship.hint"] =
                "commits waiting on the primary for synchronous replication keep waiting until a walship send with application_name \(config.applicationName) streams again: PostgreSQL releases them only on a standby's flush"
        }
        logger.notice("sender stopped", metadata: metadata)
    }

    /// WAL acknowledged to the primary from the local buffer is not offsite yet.
    private var stillExposed: Bool { statusBox.withLock { $0.degradedSince != nil } }

    /// What a failed session means to the supervisor. At start-up an unreachable source, a refused login, a missing
    /// privilege or TLS set up wrongly is a set-up mistake: it says so and stops. Later the same failures mean a
    /// restart: retry.
    private func sessionFailure(_ error: any Error) -> SenderSupervisor.Event {
        let now = ContinuousClock.now
        if let error = error as? PostgresError {
            let mistake =
                error.connectionLost || error.isSetUpProblem
                ? "\(error.message) (hint: check that PostgreSQL is running and reachable with the --source conninfo, that the role has the REPLICATION attribute, and that pg_hba.conf has a 'replication' line for it)"
                : nil
            return .primaryLost(setUpMistake: mistake, stillExposed: stillExposed, now: now)
        }
        var mistake: String?
        if case ShipProtocolError.peerSpeaksTLS = error {
            mistake =
                "the receiver \(config.receiverHost):\(config.receiverPort) requires TLS, and this sender runs with --insecure (hint: give it --tls-cert, --tls-key and --tls-ca; walship certs init makes them)"
        } else if let failure = tlsFailure(error) {
            mistake =
                "TLS with the receiver \(config.receiverHost):\(config.receiverPort) failed: \(failure) (hint: --tls-ca must be the CA that signed the receiver's certificate, the receiver's certificate must name the host in --to (or pass --tls-server-name), and the receiver must trust the CA of --tls-cert)"
        }
        return .linkLost(setUpMistake: mistake, stillExposed: stillExposed, now: now)
    }

    /// Feeds `event` to the supervisor and shows its new state in the status, with `error` as the last error (a
    /// failure's own reason when it stops).
    @discardableResult
    private func advance(
        _ supervisor: inout SenderSupervisor, _ event: SenderSupervisor.Event, error: String? = nil
    ) -> SenderSupervisor.Action {
        let action = supervisor.handle(event)
        if case .failed(let reason) = supervisor.state {
            publish(supervisor.state, error: reason)
        } else {
            publish(supervisor.state, error: error)
        }
        return action
    }

    // MARK: - Is the primary lost?

    /// A session failed on PostgreSQL's side: a message from the server is an answer, and a connection that went
    /// away starts the 2 s in which `watchPrimary` asks whether anything answers.
    private func notePrimaryFailure(_ error: any Error) {
        guard let error = error as? PostgresError else { return }
        let now = ContinuousClock.now
        primaryWatch.withLock { watch in
            if error.sqlState != nil { watch.answered(at: now) }
            if error.connectionLost { watch.connectionDropped(at: now) }
        }
    }

    /// Asks the primary whether it answers while its replication connection is down (`PrimaryWatch` says when), and
    /// tells the receiver the verdict over a verdict link while there is no stream link to carry it.
    private func watchPrimary() async throws {
        while true {
            try await Task.sleep(for: .milliseconds(100))
            let now = ContinuousClock.now
            let due = primaryWatch.withLock { watch -> Bool in
                // The replication connection's messages are contacts too, but never withdraw a drop after them.
                if let heard = statusBox.withLock({ $0.primaryLastMessageAt }) { watch.answered(at: heard) }
                guard let next = watch.nextProbe, next <= now else { return false }
                watch.probing(at: now)
                return true
            }
            if due {
                let conninfo = config.source
                let result = try await NIOThreadPool.singleton.runIfActive { PGConnection.ping(conninfo) }
                primaryWatch.withLock {
                    if result.answered { $0.answered(at: .now) } else { $0.unanswered(at: .now) }
                }
            }
            deliverVerdictIfNeeded()
        }
    }

    /// Sends the verdict on a verdict link when the stream link is down and the receiver has not heard this verdict,
    /// or not for a keepalive interval. One delivery at a time, off the watch's loop (a receiver that does not answer
    /// takes the connect timeout).
    private func deliverVerdictIfNeeded() {
        // Beside a standby there is no primary to give a verdict on.
        guard statusBox.withLock({ $0.state != .waitingForPromotion }) else { return }
        let streaming = statusBox.withLock { $0.state == .streaming }
        let now = ContinuousClock.now
        let verdict = primaryWatch.withLock { $0.verdict }
        let start = verdictDelivery.withLock { delivery -> Bool in
            delivery.shouldSend(verdict, streaming: streaming, now: now, interval: config.keepaliveInterval)
        }
        guard start else { return }
        Task {
            let delivered = await sendVerdict()
            verdictDelivery.withLock { $0.finished(verdict, delivered: delivered, at: .now) }
        }
    }

    /// A graceful stop: the receiver is told that the sender goes while the primary was alive (or that it was lost),
    /// so that the stream link's end is not taken for the primary's.
    private func reportStopping() async {
        guard statusBox.withLock({ $0.state != .waitingForPromotion }) else { return }
        primaryWatch.withLock { $0.senderStopping() }
        let delivered = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.sendVerdict() }
            group.addTask {
                try? await Task.sleep(for: .seconds(2))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !delivered {
            logger.warning(
                "could not tell the receiver that this sender stops; the DR site sees the link's silence only",
                metadata: ["walship.receiver": "\(config.receiverHost):\(config.receiverPort)"])
        }
    }

    /// One verdict link: hello, welcome, the verdict, its ack. False when the receiver could not be told.
    private func sendVerdict() async -> Bool {
        guard let identity = lastIdentity.withLock({ $0 }) else { return false }
        let frame = primaryWatch.withLock { $0.frame(now: .now, sentAt: .now()) }
        guard let channel = try? await connectReceiver() else { return false }
        do {
            return try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                let hello = Hello(
                    role: .verdict, synchronous: config.synchronous, systemIdentifier: identity.systemIdentifier,
                    timeline: identity.timeline, walSegmentSize: UInt32(identity.segmentSize.bytes),
                    senderName: config.applicationName, receiverLoss: receiverLossRule)
                guard case .welcome(let welcome) = try await exchangeHello(hello, outbound: outbound, inbound: &iterator)
                else {
                    return false
                }
                noteReceiverEnd(welcome, timeline: identity.timeline)
                try await outbound.write(.primaryVerdict(frame))
                guard case .ack = try await iterator.next() else { return false }
                return true
            }
        } catch {
            logger.debug("verdict link failed", metadata: ["walship.error": "\(error)"])
            return false
        }
    }

    /// The receiver's durable end as a verdict link's welcome gives it: after the primary stopped, the stream link
    /// may have ended before the last ack came (a link that went quiet), and the status must still show what the
    /// DR site holds (walship switchover waits on it for the shutdown checkpoint).
    private func noteReceiverEnd(_ welcome: Welcome, timeline: TimeLineID) {
        guard welcome.resumeLSN.isValid, welcome.resumeTimeline == timeline else { return }
        statusBox.withLock { status in
            guard status.timeline.map({ $0 == timeline }) ?? true, welcome.resumeLSN > status.receiverDurable else { return }
            status.receiverDurable = welcome.resumeLSN
            status.receiverWritten = max(status.receiverWritten, welcome.resumeLSN)
        }
    }

    // MARK: - Degraded: acknowledging from the local buffer

    /// Streams from the primary into the local buffer and acknowledges what is durable there, until the
    /// receiver can be reached again. Returns then, and the normal session ships the buffer first.
    private func runDegraded(firstProbeAfter: Duration, onAcknowledging: () -> Void) async throws {
        guard let buffer else { return }
        await bufferChoresDone()
        let session = ReplicationSession(conninfo: config.source, logger: logger)
        defer { Task { await session.close() } }
        let identity = try await session.connect(applicationName: config.applicationName)
        lastIdentity.withLock { $0 = identity }
        primaryWatch.withLock { $0.answered(at: .now) }
        try checkPrimary(identity)
        var found = try await session.readSlot(config.slot)
        let slotIsNew = found == nil
        if found == nil && config.createSlot {
            // A primary new since the outage began (a failover at the primary site) has no slot yet.
            try await session.createSlot(config.slot)
            logger.notice("created physical replication slot", metadata: ["walship.slot": "\(config.slot)"])
            found = try await session.readSlot(config.slot)
        }
        guard let slot = found else {
            throw SenderFatalError(
                "replication slot \"\(config.slot)\" disappeared from the primary (hint: pass --create-slot to have it created again)"
            )
        }
        let system = identity.systemIdentifier
        var opened = try buffer.open(system: system, segmentSize: identity.segmentSize)
        let restart = slot.restartLSN ?? identity.flushLSN
        // Only a slot that was already there says how far the primary got confirmation: a new one starts at the
        // primary's current position whatever the DR site has.
        let held = opened.position
        switch LeftoverBuffer.whenDegrading(
            held: held, primaryTimeline: identity.timeline, slotRestart: slotIsNew ? nil : slot.restartLSN)
        {
        case .keep:
            break
        case .discard, .setAside:
            // Left from an earlier outage and all shipped since (the slot moved past it): start afresh.
            try buffer.discard(system: system)
            try buffer.audit([
                "event": "discarded", "system": "\(system)", "timeline": "\(held.timeline)",
                "acknowledged_lsn": "\(held.durable)", "slot_restart_lsn": "\(restart)",
                "reason": "the primary's slot moved past the buffer: the DR site acknowledged all of it",
            ])
            logger.notice(
                "dropped a local buffer the DR site had acknowledged in full",
                metadata: [
                    "walship.buffer_end": "\(held.durable)", "walship.slot_restart_lsn": "\(restart)",
                ])
            opened = try buffer.open(system: system, segmentSize: identity.segmentSize)
        case .refuseToDegrade(let reason):
            throw BufferKeptForReceiver(description: reason)
        }
        let buffered = opened
        let start = buffered.position.timeline == 0 ? identity.segmentSize.segmentStart(of: restart) : buffered.position.durable

        let offsite = statusBox.withLock { $0.receiverDurable }
        let known = offsite.isValid ? offsite : (buffer.lastRecordedOffsite() ?? restart)
        let entering = statusBox.withLock { s -> Bool in
            if !s.receiverDurable.isValid { s.receiverDurable = known }
            defer { if s.degradedSince == nil { s.degradedSince = Date() } }
            return s.degradedSince == nil
        }
        if entering {
            let policy = config.receiverLoss.description
            try buffer.audit([
                "event": "degraded", "policy": policy, "system": "\(system)",
                "receiver": "\(config.receiverHost):\(config.receiverPort)",
                "offsite_durable_lsn": "\(known)", "reason": statusBox.withLock { $0.lastError } ?? "receiver unreachable",
            ])
            logger.critical(
                "the DR site is unreachable: acknowledging commits from the local buffer (RPO is no longer zero); see /status rpo_exposure",
                metadata: [
                    "walship.policy": "\(policy)", "walship.buffer": "\(buffer.directory)",
                    "walship.offsite_durable_lsn": "\(known)",
                ])
        }
        onAcknowledging()

        let gate = StreamGate()
        let (source, events) = Self.eventStream(gate)
        let timeline = identity.timeline
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // A graceful stop waits (bounded) for the buffer to fsync what was read, and reports it.
                try await withGracefulShutdownHandler {
                    try await session.stream(
                        slot: self.config.slot, start: start, timeline: timeline, gate: gate,
                        source: source, statusInterval: self.config.statusInterval)
                } onGracefulShutdown: { [drainTimeout = self.config.drainTimeout] in
                    gate.requestDrain(within: drainTimeout)
                }
            }
            group.addTask {
                for try await event in events {
                    switch event {
                    case .wal(let chunk):
                        try chunk.bytes.withUnsafeReadableBytes {
                            try buffered.append(timeline: timeline, startLSN: chunk.start, bytes: $0)
                        }
                        let durable = try buffered.sync()
                        let replayed = self.statusBox.withLock { s -> LSN in
                            s.acknowledgedFromBuffer = max(s.acknowledgedFromBuffer, durable)
                            s.primaryReported(chunk.walEnd, at: chunk.sendTime)
                            return s.replayed
                        }
                        gate.report(StreamFeedback(written: durable, flushed: durable, applied: replayed))
                    case .keepalive(let walEnd, let sendTime):
                        self.statusBox.withLock { $0.primaryReported(walEnd, at: sendTime) }
                    case .endOfTimeline:
                        throw LinkError(
                            "the primary ended its timeline while the DR site was unreachable; commits wait for the receiver")
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: firstProbeAfter)
                while !(await self.receiverAnswers()) {
                    try await Task.sleep(for: self.config.receiverProbeInterval)
                }
                self.logger.notice("the receiver answers again; shipping the local buffer")
            }
            defer { gate.requestStop() }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Whether a TCP (and TLS) connection to the receiver opens; it is closed at once.
    private func receiverAnswers() async -> Bool {
        guard let channel = try? await connectReceiver() else { return false }
        // executeThenClose finishes the channel's writer; dropping it unfinished traps in NIO.
        try? await channel.executeThenClose { _, _ in }
        return true
    }

    /// A primary this sender may stream from: PostgreSQL 15, and the same system as before. Records it.
    private func checkPrimary(_ identity: SystemIdentity) throws {
        guard identity.serverVersion / 10000 == 15 else {
            throw SenderFatalError(
                "the primary runs PostgreSQL \(identity.serverVersion / 10000); this walship supports PostgreSQL 15", kind: .setUp
            )
        }
        if let known = statusBox.withLock({ $0.systemIdentifier }), known != String(identity.systemIdentifier) {
            throw SenderFatalError(
                "the source is now database system \(identity.systemIdentifier), not \(known) as before; refusing to mix two systems' WAL (hint: restart the sender if the source was deliberately replaced)"
            )
        }
        statusBox.withLock {
            $0.systemIdentifier = String(identity.systemIdentifier)
            $0.timeline = identity.timeline
        }
    }

    /// One session: connect to the primary and the receiver, agree on a start, stream until something fails.
    private func streamOnce(onConnected: () -> Void, onStreaming: () -> Void) async throws {
        let session = ReplicationSession(conninfo: config.source, logger: logger)
        do {
            try await streamSession(session, onConnected: onConnected, onStreaming: onStreaming)
            await session.close()
        } catch {
            await session.close()
            throw error
        }
    }

    private func streamSession(_ session: ReplicationSession, onConnected: () -> Void, onStreaming: () -> Void) async throws {
        await bufferChoresDone()
        let identity = try await session.connect(applicationName: config.applicationName)
        lastIdentity.withLock { $0 = identity }
        onConnected()
        try checkPrimary(identity)
        if config.standbyWait, identity.inHotStandby { throw SourceIsStandby() }
        logger.debug(
            "connected to the primary",
            metadata: [
                "walship.system": "\(identity.systemIdentifier)", "walship.timeline": "\(identity.timeline)",
            ])
        var slot: SlotInfo?
        do {
            slot = try await session.readSlot(config.slot)
        } catch let error as WrongSlotTypeError {
            throw SenderFatalError(error.description, kind: .setUp)
        }
        if slot == nil {
            guard config.createSlot else {
                throw SenderFatalError(
                    "replication slot \"\(config.slot)\" does not exist on the primary (hint: pass --create-slot, or run SELECT pg_create_physical_replication_slot('\(config.slot)', true);)",
                    kind: .setUp)
            }
            try await session.createSlot(config.slot)
            logger.notice("created physical replication slot", metadata: ["walship.slot": "\(config.slot)"])
            slot = try await session.readSlot(config.slot)
        }

        let channel = try await connectReceiver()
        try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            let hello = Hello(
                role: .stream, synchronous: config.synchronous, systemIdentifier: identity.systemIdentifier,
                timeline: identity.timeline, walSegmentSize: UInt32(identity.segmentSize.bytes),
                senderName: config.applicationName, receiverLoss: receiverLossRule)
            guard let first = try await exchangeHello(hello, outbound: outbound, inbound: &iterator) else {
                throw LinkError(
                    config.tls == nil
                        ? "the receiver closed the link during the handshake (hint: if the receiver uses TLS, give this sender --tls-cert, --tls-key and --tls-ca instead of --insecure; a receiver of an older walship release closes it too: upgrade the receiver first)"
                        : "the receiver closed the link during the handshake (hint: does the receiver trust the CA of --tls-cert, and does --allow-source there name this certificate? A receiver of an older walship release closes it too: upgrade the receiver first)"
                )
            }
            var machine = SenderLinkStateMachine()
            let primary = PrimaryIdentity(
                systemIdentifier: identity.systemIdentifier, timeline: identity.timeline,
                flushLSN: identity.flushLSN, segmentSize: identity.segmentSize)
            var history: [TimelineHistoryEntry] = []
            // Needed to follow the spool from an older timeline, and to start an empty spool from a slot older
            // than the server's timeline.
            if case .welcome(let w) = first, identity.timeline > 1,
                w.resumeLSN.isValid ? w.resumeTimeline < identity.timeline : slot?.restartLSN != nil
            {
                history = try parseTimelineHistory(
                    String(decoding: try await session.timelineHistory(identity.timeline).content, as: UTF8.self))
            }
            let start: LSN, timeline: TimeLineID, resume: LSN
            switch machine.firstMessageReceived(first, primary: primary, slotRestartLSN: slot?.restartLSN, history: history) {
            case .startStreaming(let s, let t, let r):
                (start, timeline, resume) = (s, t, r)
                // The history file of the timeline streamed, ahead of its WAL: a DR site fenced by a promotion takes
                // WAL only of timelines proven to descend from the promoted one (the spool already holds the file
                // of its own timeline, so it only compares), and a standby following an empty spool's first
                // timeline asks for it before anything else (the old primary after a switchover).
                if t > 1 {
                    let file = try await session.timelineHistory(t)
                    try await outbound.write(.history(HistoryFile(timeline: t, content: ByteBuffer(bytes: file.content))))
                }
            case .switchTimeline(let to, let s, let fork, let beyondFork):
                guard case .welcome(let w) = first else { throw LinkError("unexpected handshake outcome") }
                // The spool needs every history file from its timeline to the new one before that timeline's WAL.
                for tli in (w.resumeTimeline + 1)...to {
                    let file = try await session.timelineHistory(tli)
                    try await outbound.write(.history(HistoryFile(timeline: tli, content: ByteBuffer(bytes: file.content))))
                }
                logger.notice(
                    "following the primary to a new timeline",
                    metadata: [
                        "walship.from_timeline": "\(w.resumeTimeline)", "walship.timeline": "\(to)",
                        "walship.fork_lsn": "\(fork)",
                    ])
                if beyondFork > 0 {
                    logger.critical(
                        "the DR site holds WAL beyond the fork that the new primary never had; it is kept aside and not served on the new timeline",
                        metadata: [
                            "walship.bytes_beyond_fork": "\(beyondFork)", "walship.fork_lsn": "\(fork)",
                            "walship.spool_end": "\(w.resumeLSN)",
                        ])
                }
                (start, timeline, resume) = (s, to, .invalid)
            case .close(let reason, let fatal): throw fatal ? SenderFatalError(reason) as any Error : LinkError(reason)
            case .reportFeedback, .none: throw LinkError("unexpected handshake outcome")
            }
            // Only once the handshake is accepted: a receiver on a timeline this primary does not lead to ends the
            // link above, and must not get the buffer moved aside first. The link's timeline counts as the
            // receiver's: a spool moved on to it holds its own timeline up to the fork.
            if let buffer, case .welcome(let w) = first {
                try await settleLeftoverBuffer(
                    buffer, receiverEnd: (w.resumeTimeline, w.resumeLSN),
                    receiverTimeline: max(w.resumeTimeline, timeline), identity: identity,
                    history: history, session: session)
                await bufferChoresDone()
            }
            // On a timeline the primary has left, the buffer is shipped up to where that timeline ends: what it holds
            // beyond (commits the old primary acknowledged from it after the new primary forked off) was never on
            // the new primary, and a DR standby that replayed it could not follow the new timeline. It stays in the
            // buffer, which is set aside once the spool has moved on (`settleLeftoverBuffer`).
            var timelineEnds: TimelineEnded?
            if timeline < identity.timeline, let end = timelineEnd(of: timeline, history: history, current: identity.timeline) {
                timelineEnds = TimelineEnded(timeline: timeline, next: end.next, at: end.switchPoint)
            }
            let replay =
                try bufferedWAL(
                    from: start, system: identity.systemIdentifier, segmentSize: identity.segmentSize,
                    timeline: timeline, endingAt: timelineEnds?.at)
                ?? timelineEnds.flatMap { ended in
                    siteSpoolWAL(
                        from: start, system: identity.systemIdentifier, segmentSize: identity.segmentSize,
                        timeline: timeline, endingAt: ended.at)
                }
            let endsAfterReplay = replay.flatMap { replay in timelineEnds.flatMap { replay.range.upperBound >= $0.at ? $0 : nil }
            }
            clearProblem(
                "stream", "streaming from the primary to the receiver",
                metadata: [
                    "walship.system": "\(identity.systemIdentifier)", "walship.start_lsn": "\(start)",
                    "walship.timeline": "\(timeline)", "walship.receiver_durable_lsn": "\(resume)",
                ])
            // Stopping meanwhile: no stream starts.
            if Task.isShuttingDownGracefully { throw SenderStopping() }
            onStreaming()
            try await stream(
                session: session, machine: NIOLockedValueBox(machine), start: start, timeline: timeline, resume: resume,
                replay: replay, endsAfterReplay: endsAfterReplay, channel: channel.channel, iterator: iterator,
                outbound: outbound)
        }
    }

    /// WAL the receiver needs from `start` that only the local buffer still has (the primary's slot moved on
    /// when it was acknowledged from there), or nil.
    private func bufferedWAL(
        from start: LSN, system: UInt64, segmentSize: WALSegmentSize, timeline: TimeLineID,
        endingAt timelineEnd: LSN? = nil
    ) throws -> BufferedWAL? {
        guard let buffer, let held = try buffer.range(system: system, segmentSize: segmentSize, timeline: timeline) else {
            return nil
        }
        statusBox.withLock { $0.acknowledgedFromBuffer = max($0.acknowledgedFromBuffer, held.upperBound) }
        if held.upperBound <= start {
            leaveDegraded(system: system)
            return nil
        }
        let end = min(held.upperBound, timelineEnd ?? held.upperBound)
        guard end > start else { return nil }
        guard held.lowerBound <= start else {
            throw SenderFatalError(
                "the receiver's WAL ends at \(start), but the local buffer in \(buffer.directory) only starts at \(held.lowerBound): the WAL between was acknowledged to the primary and is in neither place (hint: the DR site needs a re-seed; see docs/runbook.md)"
            )
        }
        logger.notice(
            "shipping WAL acknowledged from the local buffer",
            metadata: [
                "walship.from": "\(start)", "walship.to": "\(end)", "walship.bytes": "\(end.bytesAfter(start))",
            ])
        let spool = try buffer.open(system: system, segmentSize: segmentSize)
        return BufferedWAL(
            walDirectory: spool.walDirectory, segmentSize: segmentSize, range: start..<end, source: "the local buffer")
    }

    /// WAL of `timeline`, which the primary left at `timelineEnd`, that this site's spool holds from `start` on
    /// (`--site-spool`), or nil. A site that ran as the standby's for a while received there everything the other
    /// site's primary wrote; its own server, a standby meanwhile, recycled that WAL at its restartpoints.
    private func siteSpoolWAL(
        from start: LSN, system: UInt64, segmentSize: WALSegmentSize, timeline: TimeLineID, endingAt timelineEnd: LSN
    ) -> BufferedWAL? {
        guard let root = config.siteSpool else { return nil }
        do {
            guard let reader = try SpoolReader.openIfPresent(root: root, system: system), reader.segmentSize == segmentSize,
                let range = SiteSpoolCatchUp.range(
                    from: start, held: try reader.heldWAL(timeline: timeline, from: start), timelineEnd: timelineEnd)
            else { return nil }
            logger.notice(
                "shipping WAL of a finished timeline from this site's spool",
                metadata: [
                    "walship.site_spool": "\(root)", "walship.timeline": "\(timeline)", "walship.from": "\(range.lowerBound)",
                    "walship.to": "\(range.upperBound)", "walship.bytes": "\(range.upperBound.bytesAfter(range.lowerBound))",
                ])
            return BufferedWAL(
                walDirectory: reader.walDirectory, segmentSize: segmentSize, range: range, source: "this site's spool \(root)")
        } catch {
            // The primary may still have it: streaming from there is tried, and fails clearly if it does not.
            logger.warning(
                "cannot read this site's spool; the primary's pg_wal is asked instead",
                metadata: ["walship.site_spool": "\(root)", "walship.error": "\(error)"])
            return nil
        }
    }

    /// A buffer left on an older timeline than the receiver's spool (or the timeline the link moves it to) can
    /// no longer be shipped: the spool holds that timeline up to its fork. The buffer is dropped when it ends
    /// there, else moved aside with what lies beyond the fork (commits acknowledged to the old primary that
    /// neither the new primary nor the DR site has). `history` is the primary's history file when the handshake
    /// read it already; it is read here only if needed and not.
    private func settleLeftoverBuffer(
        _ buffer: LocalBuffer, receiverEnd: (timeline: TimeLineID, lsn: LSN), receiverTimeline: TimeLineID,
        identity: SystemIdentity, history: [TimelineHistoryEntry], session: ReplicationSession
    ) async throws {
        let system = identity.systemIdentifier
        guard let held = try buffer.position(system: system, segmentSize: identity.segmentSize) else { return }
        var fork: LSN?
        if held.timeline < receiverTimeline && held.timeline < identity.timeline {
            let entries =
                history.isEmpty
                ? try parseTimelineHistory(
                    String(decoding: try await session.timelineHistory(identity.timeline).content, as: UTF8.self))
                : history
            fork = timelineEnd(of: held.timeline, history: entries, current: identity.timeline)?.switchPoint
        }
        switch LeftoverBuffer.whenLinked(held: held, receiverEnd: receiverEnd, receiverTimeline: receiverTimeline, fork: fork) {
        case .keep, .refuseToDegrade:
            return
        case .discard:
            statusBox.withLock { $0.acknowledgedFromBuffer = max($0.acknowledgedFromBuffer, held.durable) }
            leaveDegraded(system: system)
        case .setAside(let beyond):
            let path = try buffer.setAside(system: system, timeline: held.timeline)
            let beyondText = beyond.map(String.init) ?? "unknown"
            try buffer.audit([
                "event": "set-aside", "system": "\(system)", "timeline": "\(held.timeline)",
                "acknowledged_lsn": "\(held.durable)", "fork_lsn": fork.map { "\($0)" } ?? "unknown",
                "bytes_beyond_fork": beyondText, "path": path,
            ])
            statusBox.withLock {
                $0.degradedSince = nil
                $0.acknowledgedFromBuffer = .invalid
            }
            logger.critical(
                "the local buffer held WAL of an older timeline that the DR site can no longer take; it is kept aside, not shipped: commits acknowledged from it beyond the fork are on neither the new primary nor the DR site",
                metadata: [
                    "walship.path": "\(path)", "walship.timeline": "\(held.timeline)",
                    "walship.acknowledged_lsn": "\(held.durable)",
                    "walship.fork_lsn": "\(fork.map { "\($0)" } ?? "unknown")", "walship.bytes_beyond_fork": "\(beyondText)",
                ])
        }
    }

    /// The receiver has everything acknowledged from the buffer: acknowledgement is synchronous again from here on.
    /// Dropping the buffer and auditing it (file I/O, fsync) is handed to a task, since this may run on the event
    /// loop; whatever looks at the buffer next waits for it (`bufferChoresDone`).
    private func leaveDegraded(system: UInt64) {
        guard let buffer else { return }
        let (since, acknowledged) = statusBox.withLock { s in
            defer {
                s.degradedSince = nil
                s.acknowledgedFromBuffer = .invalid
            }
            return (s.degradedSince, s.acknowledgedFromBuffer)
        }
        bufferChores.withLock { latest in
            let previous = latest
            latest = Task {
                await previous?.value
                self.dropBuffer(buffer, system: system, degradedSince: since, acknowledged: acknowledged)
            }
        }
    }

    /// Waits until the file jobs on the local buffer handed off so far are done.
    func bufferChoresDone() async {
        await bufferChores.withLock { $0 }?.value
    }

    private func dropBuffer(_ buffer: LocalBuffer, system: UInt64, degradedSince since: Date?, acknowledged: LSN) {
        do {
            try buffer.discard(system: system)
            try buffer.audit([
                "event": "synchronous", "system": "\(system)", "acknowledged_lsn": "\(acknowledged)",
                "degraded_seconds": since.map { String(Int(Date().timeIntervalSince($0).rounded())) } ?? "0",
            ])
        } catch {
            logger.error("cannot tidy the local buffer", metadata: ["walship.error": "\(error)"])
        }
        if since != nil {
            logger.notice(
                "the DR site holds every acknowledged commit again; back to synchronous acknowledgement",
                metadata: [
                    "walship.acknowledged_lsn": "\(acknowledged)"
                ])
        }
    }

    private func stream(
        session: ReplicationSession, machine: NIOLockedValueBox<SenderLinkStateMachine>, start: LSN, timeline: TimeLineID,
        resume: LSN,
        replay: BufferedWAL?, endsAfterReplay: TimelineEnded?, channel: Channel,
        iterator: NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>
    ) async throws {
        let gate = StreamGate()
        let floor = statusBox.withLock { $0.acknowledgedFromBuffer }
        if resume.isValid || floor.isValid {
            gate.report(StreamFeedback(written: max(resume, floor), flushed: max(resume, floor)))
        }
        // WAL the buffer holds comes from there; the primary continues where it ends.
        let live = replay?.range.upperBound ?? start
        // Chunk and compressed-payload buffers go round instead of being allocated per frame. Only idle ones
        // count against the pools; during a catch-up most payloads are queued in the channel.
        let buffers = WALBuffers(chunks: BufferPool(maxIdle: 4), payloads: BufferPool(maxIdle: 4))
        let link = LinkSink(
            sender: self, channel: channel, timeline: timeline, machine: machine, buffers: buffers,
            compression: config.compression)
        statusBox.withLock { $0.sent = start }
        try await ShipChannel.setTap(on: channel) { [self] in acknowledgeOnEventLoop($0, machine: machine, gate: gate) }
        try await ShipChannel.whenWritable(channel) { gate.produceMore() }
        var iterator = iterator
        try await ShipChannel.runLink(
            channel: channel,
            workers: [
                {
                    // Written through the async writer: its frames enter the channel before any the
                    // replication thread writes after this returns.
                    if let replay { try await self.ship(replay, timeline: timeline, machine: machine, to: outbound) }
                    if let endsAfterReplay {
                        try await self.awaitDurable(endsAfterReplay.at)
                        throw endsAfterReplay
                    }
                    // A graceful stop: read no more, send what was read, wait (bounded) for its acknowledgement, and
                    // report it to the primary as the last flush position (`StreamGate.requestDrain`).
                    try await withGracefulShutdownHandler {
                        try await session.stream(
                            slot: self.config.slot, start: live, timeline: timeline, gate: gate,
                            sink: link, statusInterval: self.config.statusInterval,
                            chunkBuffer: { buffers.chunks.take(capacity: $0) })
                    } onGracefulShutdown: { [drainTimeout = self.config.drainTimeout] in
                        gate.requestDrain(within: drainTimeout)
                    }
                    if let ended = link.timelineEnded { throw ended }
                    if let drained = gate.drained {
                        if !drained.complete {
                            self.logger.warning(
                                "the receiver did not acknowledge all WAL sent before the stop's time ran out; the primary's slot keeps the rest for the next sender",
                                metadata: ["walship.sent": "\(drained.read)", "walship.durable": "\(drained.reported)"])
                        }
                        try? await outbound.write(.refusal(Refusal(code: .shuttingDown, message: "walship send is stopping")))
                        throw SenderStopping()
                    }
                    throw LinkError("the replication stream from the primary ended")
                },
                { try await self.sendKeepalives(outbound) },
                { try await self.sendModeChanges(outbound) },
            ],
            onEnd: { _ in gate.requestStop() },
            reader: { try await self.readUntilClosed(&iterator, machine: machine, gate: gate) })
    }

    /// Waits until the receiver acknowledges WAL up to `end` as durable, at most the link timeout: so a link that
    /// ends on purpose after shipping it does not end before the receiver has it.
    private func awaitDurable(_ end: LSN) async throws {
        let deadline = ContinuousClock.now + config.linkTimeout
        while statusBox.withLock({ $0.receiverDurable }) < end {
            guard ContinuousClock.now < deadline else {
                throw LinkError("the receiver did not acknowledge the WAL up to \(end) within the link timeout")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    private func ship(
        _ replay: BufferedWAL, timeline: TimeLineID, machine: NIOLockedValueBox<SenderLinkStateMachine>,
        to outbound: NIOAsyncChannelOutboundWriter<ShipMessage>
    ) async throws {
        let reader = WALRangeReader(walDirectory: replay.walDirectory, segmentSize: replay.segmentSize)
        var at = replay.range.lowerBound
        while at < replay.range.upperBound {
            let bytes = try reader.read(timeline: timeline, from: at, durableEnd: replay.range.upperBound, maxBytes: 128 * 1024)
            guard !bytes.isEmpty else { throw LinkError("\(replay.source) has no WAL at \(at)") }
            let (primaryEnd, primaryNow) = statusBox.withLock { (max($0.primaryLSN, replay.range.upperBound), $0.primaryNow) }
            let chunk = WALChunk(start: at, bytes: ByteBuffer(bytes: bytes), walEnd: primaryEnd, sendTime: primaryNow)
            try await outbound.write(.walData(frame(for: chunk, timeline: timeline, machine: machine, pool: nil)))
            at = chunk.end
        }
    }

    /// The WAL frame for `chunk`, recorded as sent: before it is written, so an ack can never outrun what we
    /// believe we sent.
    fileprivate func frame(
        for chunk: WALChunk, timeline: TimeLineID, machine: NIOLockedValueBox<SenderLinkStateMachine>,
        pool: BufferPool?, effort: CompressionEffort = .fast
    ) -> WALData {
        let frame = WALData.make(
            timeline: timeline, startLSN: chunk.start, primaryEndLSN: chunk.walEnd,
            primarySendTime: chunk.sendTime, wal: chunk.bytes, pool: pool, effort: effort)
        machine.withLockedValue { $0.walSent(upTo: chunk.end) }
        statusBox.withLock {
            $0.sent = chunk.end
            $0.walBytesSent += UInt64(chunk.bytes.readableBytes)
            $0.walFramesSent += 1
            if effort == .high { $0.walFramesHighCompression += 1 }
            $0.wireBytesSent += UInt64(frame.payload.readableBytes + WALData.frameOverheadBytes)
        }
        return frame
    }

    /// The buffers of one stream's forward path.
    fileprivate struct WALBuffers: Sendable {
        let chunks: BufferPool
        let payloads: BufferPool
    }

    /// The bounded hand-over from the replication thread to async code (in degraded mode): at most 4 chunks
    /// (4 MiB in a catch-up) wait.
    private static func eventStream(_ gate: StreamGate) -> (StreamEvents.Source, StreamEvents) {
        let producer = StreamEvents.makeSequence(
            backPressureStrategy: .init(lowWatermark: 2, highWatermark: 4), finishOnDeinit: false, delegate: gate)
        return (producer.source, producer.sequence)
    }

    /// Frames other than acks (the tap takes those), until the link ends. An ack that still gets here arrived
    /// before the tap was set, when no WAL had been sent on this link: it says nothing new, and taken now it could
    /// come after a newer one the tap handled.
    private func readUntilClosed(
        _ iterator: inout NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        machine: NIOLockedValueBox<SenderLinkStateMachine>, gate: StreamGate
    ) async throws {
        while let message = try await iterator.next() {
            if case .ack = message { continue }
            try received(message, machine: machine, gate: gate)
        }
        throw LinkError("the receiver closed the link")
    }

    /// One frame from the receiver through the link's state machine: an ack is reported to the primary and
    /// recorded; anything else that is not allowed ends the link.
    func received(_ message: ShipMessage, machine: NIOLockedValueBox<SenderLinkStateMachine>, gate: StreamGate) throws {
        switch machine.withLockedValue({ $0.messageReceived(message) }) {
        case .reportFeedback(let written, let durable, let replayed):
            // Never report less than was acknowledged from the local buffer: the primary has let that go.
            let floor = statusBox.withLock { $0.acknowledgedFromBuffer }
            gate.report(StreamFeedback(written: max(written, floor), flushed: max(durable, floor), applied: replayed))
            if floor.isValid && durable >= floor, let system = statusBox.withLock({ $0.systemIdentifier.flatMap(UInt64.init) }) {
                leaveDegraded(system: system)
            }
            statusBox.withLock {
                $0.receiverWritten = written
                $0.receiverDurable = durable
                if replayed.isValid { $0.replayed = replayed }
                $0.receiverLastAckAt = .now
                $0.forgetPassedPoints()
            }
        case .close(let reason, _):
            throw LinkError(reason)
        case .none:
            break
        case .startStreaming, .switchTimeline:
            throw LinkError("unexpected frame from the receiver")
        }
    }

    /// Every ack is handled here, on the event loop, in the order it arrived: so the primary hears of an offsite
    /// fsync without a hop through a task (a thread switch per synchronous commit), and no ack can overtake an
    /// older one, which would take the feedback backwards or end the link. At the end of a degraded episode the
    /// buffer's tidying goes to a task (`leaveDegraded`).
    func acknowledgeOnEventLoop(
        _ message: ShipMessage, machine: NIOLockedValueBox<SenderLinkStateMachine>,
        gate: StreamGate
    ) -> TapVerdict {
        guard case .ack = message else { return .forward }
        do {
            try received(message, machine: machine, gate: gate)
            return .consumed
        } catch {
            return .fail(error)
        }
    }

    /// Tells the receiver how the primary treats this sender: first what it missed while there was no link, then
    /// every change as the mode watch sees it.
    private func sendModeChanges(_ outbound: NIOAsyncChannelOutboundWriter<ShipMessage>) async throws {
        var changes = modes.withLock { $0.linkStarted() }
        while true {
            for change in changes { try await outbound.write(.mode(change)) }
            try await Task.sleep(for: .milliseconds(200))
            changes = modes.withLock { $0.takeUnsent() }
        }
    }

    private func sendKeepalives(_ outbound: NIOAsyncChannelOutboundWriter<ShipMessage>) async throws {
        while true {
            try await Task.sleep(for: config.keepaliveInterval)
            // The primary's position and clock (not ours), so the receiver's lag stays in the primary's time.
            let (primary, now) = statusBox.withLock { ($0.primaryLSN, $0.primaryNow) }
            try await outbound.write(.keepalive(Keepalive(primaryEndLSN: primary, sendTime: now, replyRequested: true)))
        }
    }

    private func connectReceiver() async throws -> ShipAsyncChannel {
        try await connectToReceiver(
            host: config.receiverHost, port: config.receiverPort, linkTimeout: config.linkTimeout, tls: config.tls)
    }

    // MARK: - Slot retention

    /// Watches the slot through an ordinary SQL connection, also while the receiver is unreachable: the
    /// primary keeps WAL for us and its disk is the hospital's lifeline.
    private func watchSlot() async throws {
        let sql = SQLSession(conninfo: config.source, applicationName: config.applicationName + "_monitor")
        defer { Task { await sql.close() } }
        var lastWALStatus: String?
        while true {
            do {
                let rows = try await sql.query(
                    """
                    SELECT s.wal_status, s.safe_wal_size::text, s.restart_lsn::text,
                           CASE WHEN pg_is_in_recovery() OR s.restart_lsn IS NULL THEN NULL
                                ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint::text END,
                           s.active::text, current_setting('synchronous_standby_names'),
                           CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
                           (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text
                    FROM pg_replication_slots s WHERE s.slot_name = $1
                    """, [config.slot])
                clearProblem("slot", "watching the replication slot again")
                if let row = rows.first {
                    let walStatus = row[0]
                    statusBox.withLock {
                        $0.slot.walStatus = walStatus
                        $0.slot.safeWALSizeBytes = row[1].flatMap { Int64($0) }
                        $0.slot.restartLSN = row[2]
                        $0.slot.retainedBytes = row[3].flatMap { Int64($0) }
                        $0.slot.active = row[4] == "true"
                        $0.slot.checkedAt = Date()
                        // The primary's current LSN and clock, also while the stream is down.
                        if let lsn = row[6].flatMap({ LSN($0) }), let micros = row[7].flatMap({ Int64($0) }) {
                            $0.primaryReported(lsn, at: PostgresTimestamp(unixMicroseconds: micros))
                        }
                    }
                    if walStatus != lastWALStatus {
                        logSlotStatus(walStatus, retained: row[3], safe: row[1])
                        lastWALStatus = walStatus
                    }
                    if walStatus == "lost" {
                        throw SenderFatalError(
                            "replication slot \"\(config.slot)\" was invalidated (max_slot_wal_keep_size): the primary removed WAL the DR site never received. walship cannot continue without a gap: take a new base backup and re-seed the DR site (docs/runbook.md)"
                        )
                    }
                }
            } catch let error as SenderFatalError {
                throw error
            } catch {
                noteProblem("slot", "\(error)", "cannot read the slot's retention from the primary")
            }
            try await Task.sleep(for: config.slotCheckInterval)
        }
    }

    /// Reads how the primary treats this sender while it streams: `sync_state` of its row in
    /// `pg_stat_replication` (NULL without `pg_monitor`: read as unknown, never as sync) and the settings that
    /// decide it. Each change goes to the receiver's mode history and to the status.
    private func watchReplicationMode() async throws {
        let sql = SQLSession(conninfo: config.source, applicationName: config.applicationName + "_monitor")
        defer { Task { await sql.close() } }
        while true {
            try await Task.sleep(for: config.modeCheckInterval)
            let (streaming, degraded, exposure) = statusBox.withLock { s in
                (
                    s.state == .streaming || s.degradedSince != nil, s.degradedSince != nil,
                    s.rpoExposure(now: .now)?.bytes ?? 0
                )
            }
            // Between sessions there is no row to read; a commit then waits or is acknowledged from the buffer,
            // and the supervisor's state says which.
            guard streaming else { continue }
            do {
                let rows = try await sql.query(
                    """
                    SELECT (SELECT sync_state FROM pg_stat_replication WHERE application_name = $1
                            ORDER BY state = 'streaming' DESC LIMIT 1),
                           current_setting('synchronous_commit'), current_setting('synchronous_standby_names'),
                           CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
                           (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text
                    """, [config.applicationName])
                guard let row = rows.first, row.count >= 5 else { continue }
                let observation = ReplicationModeTracker.Observation(
                    syncState: row[0], synchronousCommit: row[1], synchronousStandbyNames: row[2], degraded: degraded,
                    exposureBytes: exposure, lsn: row[3].flatMap { LSN($0) } ?? .invalid,
                    at: row[4].flatMap { Int64($0) }.map { PostgresTimestamp(unixMicroseconds: $0) } ?? .now())
                if let change = modes.withLock({ $0.observed(observation) }) { logModeChange(change) }
            } catch {
                noteProblem("mode", "\(error)", "cannot read how the primary treats this sender")
            }
        }
    }

    private func logModeChange(_ change: ModeChange) {
        let metadata: Logger.Metadata = [
            "walship.mode": "\(change.mode.rawValue)", "walship.sync_state": "\(change.syncState)",
            "walship.lsn": "\(change.lsn)",
        ]
        if config.synchronous && change.mode != .sync && change.mode != .degraded {
            logger.warning(
                "--sync is set but the primary does not treat this sender as synchronous: \(change.detail)",
                metadata: metadata)
        } else {
            logger.notice("replication mode: \(change.detail)", metadata: metadata)
        }
    }

    private func logSlotStatus(_ walStatus: String?, retained: String?, safe: String?) {
        let metadata: Logger.Metadata = [
            "walship.slot": "\(config.slot)", "walship.wal_status": "\(walStatus ?? "none")",
            "walship.retained_bytes": "\(retained ?? "unknown")", "walship.safe_wal_size": "\(safe ?? "unlimited")",
        ]
        switch walStatus {
        case "reserved", nil: logger.info("replication slot retention", metadata: metadata)
        case "lost": logger.critical("replication slot invalidated", metadata: metadata)
        default:
            logger.warning(
                "replication slot is retaining more WAL than max_wal_size; the primary's disk is filling", metadata: metadata)
        }
    }

    // MARK: - State and logging

    /// Shows the supervisor's state in the status document.
    func publish(_ state: SenderSupervisor.State, error: String? = nil) {
        statusBox.withLock { $0.setState(state.status, error: error) }
    }

    /// Logs a problem the first time it appears (and when it changes), not on every retry.
    private func noteProblem(_ area: String, _ text: String, _ message: Logger.Message) {
        let isNew = problems.withLock { p in
            defer { p[area] = text }
            return p[area] != text
        }
        if isNew { logger.error(message, metadata: ["walship.error": "\(text)"]) }
    }

    /// Logs recovery from a problem once; logs `message` at info level either way.
    private func clearProblem(_ area: String, _ message: Logger.Message, metadata: Logger.Metadata = [:]) {
        let hadProblem = problems.withLock { $0.removeValue(forKey: area) != nil }
        if hadProblem || area == "stream" { logger.notice(message, metadata: metadata) }
    }
}

/// Sends `hello` and returns the receiver's answer, nil if it closed the link. A receiver that refuses our
/// certificate closes the connection right after the TLS handshake, and the hello's write may then fail with
/// a closed channel before the TLS alert that says why has been read: the alert, or a refusal, is looked for
/// inbound first, so the user is told the reason and not "I/O on closed channel".
func exchangeHello(
    _ hello: Hello, outbound: NIOAsyncChannelOutboundWriter<ShipMessage>,
    inbound iterator: inout NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator
) async throws -> ShipMessage? {
    do {
        try await outbound.write(.hello(hello))
    } catch {
        if let answer = try await iterator.next() { return answer }
        throw error
    }
    return try await iterator.next()
}

/// Opens a ship link to the receiver, with mutual TLS unless `tls` is nil.
func connectToReceiver(host: String, port: Int, linkTimeout: Duration, tls: ClientTLS?) async throws -> ShipAsyncChannel {
    let timeout = TimeAmount.nanoseconds(Int64(linkTimeout.components.seconds) * 1_000_000_000)
    do {
        return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            // The replication thread writes frames of up to 1 MiB and pauses while more than this is unsent.
            .channelOption(.writeBufferWaterMark, value: .init(low: 1 << 20, high: 2 << 20))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls.context, serverHostname: tls.serverName(connectingTo: host)))
                    }
                    return try ShipChannel.configure(channel, linkTimeout: timeout)
                }
            }
    } catch {
        throw LinkError("receiver \(host):\(port) is unreachable: \(error)")
    }
}

/// What the receiver was last told of the primary over a verdict link, and whether a delivery is under way.
struct VerdictDelivery: Sendable {
    /// A failed delivery is tried again after this, not in a tight loop against an unreachable receiver.
    static let retryAfterFailure = Duration.seconds(1)

    private(set) var inFlight = false
    private(set) var delivered: PrimaryVerdict.State?
    private(set) var deliveredAt: ContinuousClock.Instant?
    private(set) var failedAt: ContinuousClock.Instant?

    /// Whether to send `verdict` now: not while a stream link carries the primary's messages, never two at once;
    /// a changed verdict at once, the same one again after `interval` (so the receiver's last contact stays fresh).
    mutating func shouldSend(
        _ verdict: PrimaryWatch.Verdict, streaming: Bool, now: ContinuousClock.Instant, interval: Duration
    ) -> Bool {
        guard !streaming, !inFlight else { return false }
        if let failedAt, now - failedAt < Self.retryAfterFailure { return false }
        let state = Self.state(of: verdict)
        if state == .senderStopped { return false }
        if state == delivered, let deliveredAt, now - deliveredAt < interval { return false }
        inFlight = true
        return true
    }

    mutating func finished(_ verdict: PrimaryWatch.Verdict, delivered: Bool, at now: ContinuousClock.Instant) {
        inFlight = false
        if delivered {
            self.delivered = Self.state(of: verdict)
            deliveredAt = now
            failedAt = nil
        } else {
            failedAt = now
        }
    }

    static func state(of verdict: PrimaryWatch.Verdict) -> PrimaryVerdict.State {
        switch verdict {
        case .alive: .alive
        case .unanswered: .unanswered
        case .lost: .lost
        case .senderStopped: .senderStopped
        }
    }
}

/// WAL to send from the local buffer before the primary's stream.
/// WAL the link ships from a spool-shaped directory before the primary's stream continues: the local buffer's, or
/// this site's spool's.
struct BufferedWAL {
    let walDirectory: String
    let segmentSize: WALSegmentSize
    let range: Range<LSN>
    /// Names the directory in errors.
    let source: String
}

/// Which WAL of a timeline the primary has left is shipped from this site's spool.
enum SiteSpoolCatchUp {
    /// From `start` up to the timeline's end, or as far as the spool holds it without a gap when less (the primary
    /// streams the rest); nil when the spool does not reach back to `start` or holds nothing after it.
    static func range(from start: LSN, held: Range<LSN>?, timelineEnd: LSN) -> Range<LSN>? {
        guard let held, held.lowerBound <= start else { return nil }
        let end = min(held.upperBound, timelineEnd)
        return end > start ? start..<end : nil
    }
}

/// The primary ended the timeline we streamed (it, or an ancestor, was promoted away from it).
struct TimelineEnded: Error {
    let timeline: TimeLineID
    let next: TimeLineID
    let at: LSN
}

/// Degrading would mean dropping a buffer of another timeline that the DR site may lack: commits wait instead.
struct BufferKeptForReceiver: Error, CustomStringConvertible {
    let description: String
}

/// A graceful stop ended the session (after draining it, when it streamed).
struct SenderStopping: Error, CustomStringConvertible {
    var description: String { "walship send is stopping" }
}

/// The link to the receiver failed; the sender reconnects.
struct LinkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Ships the primary's stream from the replication thread itself: each chunk is compressed there and its frame
/// written into the link, so a synchronous commit's WAL reaches the event loop without a hop through a task.
/// The thread pauses while the link's queue of unsent bytes is above its high-water mark and goes on when the
/// channel is writable again (`ShipChannel.whenWritable`). How hard each chunk is compressed follows the link
/// (`CompressionPolicy`), which times each compression and how fast the socket takes the frames.
private final class LinkSink: StreamSink {
    let sender: Sender
    let channel: Channel
    let timeline: TimeLineID
    let machine: NIOLockedValueBox<SenderLinkStateMachine>
    let buffers: Sender.WALBuffers
    private let ended = Mutex<TimelineEnded?>(nil)
    /// Written on the replication thread, taken by the socket on the event loop.
    private let compression: SharedCompressionPolicy

    init(
        sender: Sender, channel: Channel, timeline: TimeLineID, machine: NIOLockedValueBox<SenderLinkStateMachine>,
        buffers: Sender.WALBuffers, compression: CompressionPolicy.Mode
    ) {
        self.sender = sender
        self.channel = channel
        self.timeline = timeline
        self.machine = machine
        self.buffers = buffers
        self.compression = SharedCompressionPolicy(mode: compression)
    }

    /// Set when the primary ended our timeline.
    var timelineEnded: TimelineEnded? { ended.withLock { $0 } }

    func deliver(_ event: StreamEvent) -> StreamDemand {
        switch event {
        case .wal(let chunk):
            let walBytes = chunk.bytes.readableBytes
            let (frame, _, written) = compression.compress(walBytes: walBytes) {
                sender.frame(for: chunk, timeline: timeline, machine: machine, pool: buffers.payloads, effort: $0)
            }
            sender.statusBox.withLock { $0.primaryReported(chunk.walEnd, at: chunk.sendTime) }
            let compressed = frame.compression == .lz4Block
            if compressed { buffers.chunks.recycle(chunk.bytes) }  // else the chunk itself is the payload
            let taken = channel.eventLoop.makePromise(of: Void.self)
            channel.writeAndFlush(ShipMessage.walData(frame), promise: taken)
            taken.futureResult.whenComplete { [self] _ in
                if compressed { buffers.payloads.recycle(frame.payload) }
                compression.taken(walBytes: walBytes, writtenAt: written)
            }
        case .keepalive(let walEnd, let sendTime):
            sender.statusBox.withLock { $0.primaryReported(walEnd, at: sendTime) }
            channel.writeAndFlush(
                ShipMessage.keepalive(Keepalive(primaryEndLSN: walEnd, sendTime: sendTime, replyRequested: false)),
                promise: nil)
        case .endOfTimeline(let next, let nextStart):
            ended.withLock { $0 = TimelineEnded(timeline: timeline, next: next, at: nextStart) }
            return .stop
        }
        return channel.isWritable ? .more : .pause
    }

    func finish(_ error: (any Error)?) {}
}

/// `--standby-wait`: the source answered as a standby; the supervisor waits and asks again.
struct SourceIsStandby: Error {}
