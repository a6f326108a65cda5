import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import ShipProtocol
import ShipTLS
import Spool
import StatusModel
import Synchronization
import WALCore

public struct ReceiverConfiguration: Sendable {
    public var listenHost: String
    public var listenPort: Int
    public var spoolRoot: String
    /// `--spool-max-bytes`: nil lets the spool use its whole filesystem.
    public var spoolQuota: UInt64?
    /// Silence on a link for this long means the sender is dead; only then may another link take its place.
    public var linkTimeout: Duration = .seconds(30)
    public var name: String
    /// Most WAL bytes queued between the link reader and the spool writer of one link: enough for a few of the
    /// sender's chunks (up to 1 MiB each) to wait out an fsync, small enough for the memory budget.
    public var maxQueuedBytes = 3 << 20
    /// An asynchronous sender that is catching up waits for no commit, so while more WAL is already queued the
    /// writer goes on writing and syncs at most this far and this long apart (and always when it has caught
    /// up). Each fsync then covers several batches instead of stalling the link after every one. A synchronous
    /// sender's batches are synced one by one: a commit is waiting on each.
    public var asyncSyncBytes = 16 << 20
    public var asyncSyncInterval: Duration = .milliseconds(200)
    /// Complete base backups to keep; older backups and WAL nothing needs are pruned (see `RetentionPlan`).
    public var retainBackups = 2
    /// Seconds back from now that must stay restorable (`--retain-days`): every backup that needs is kept besides
    /// the newest `retainBackups`; nil for no window.
    public var recoveryWindow: Double?
    public var pruneInterval: Duration = .seconds(60)
    /// With `--archive`: what of a system the object store has not confirmed, which retention keeps.
    public var archiveHold: (@Sendable (UInt64) -> ArchiveHold)?
    /// Where standbys are served (recorded in the spool so `walship promote` can recognise a walship replica).
    public var standbyListen: String?
    /// Accept WAL for systems whose DR replica was promoted (fenced). For operators who know the old
    /// primary's WAL is wanted, e.g. after a drill done by hand.
    public var acceptFenced = false
    /// Mutual TLS; nil only for a deliberately plaintext link (--insecure).
    public var tls: NIOSSLContext?
    /// `--allow-source CERTNAME=SYSTEMID`: when set, a client certificate name may ship only its system.
    public var allowedSources: [String: UInt64] = [:]
    /// Where the spool's files are: the real file system but in tests (see `StorageFaultFileSystem`).
    public var fileSystem: any FileSystem = PosixFileSystem()

    public init(listenHost: String, listenPort: Int, spoolRoot: String, name: String) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.spoolRoot = spoolRoot
        self.name = name
    }
}

/// The DR-site end of the link: validates WAL, stores it durably in the spool, and acknowledges only
/// what is on disk. A service: a graceful shutdown drains it (`drain`).
public final class Receiver: Service {
    let config: ReceiverConfiguration
    let logger: Logger
    public let spool: Spool
    private let links: Mutex<StreamLinkRegistry<Channel>>
    private let linkDetails = Mutex<[Int: LinkDetails]>([:])
    private let writers = Mutex<[UInt64: NIOThreadPool]>([:])
    /// Per system, a thread for its file work besides WAL (backups, primary.json, retention): a slow disk of one
    /// system then holds up nothing of another's.
    private let housekeepers = Mutex<[UInt64: NIOThreadPool]>([:])
    /// Per ship-link event loop, the systems whose links it carries (and how many): a link may fsync on its loop
    /// only while the loop is its system's alone.
    private let loopSystems = Mutex(LoopOccupancy())
    private let nextLinkID = Atomic<Int>(1)
    /// What the standbys of each system replayed, when a standby endpoint runs; the furthest is sent back in
    /// acks so the primary's pg_stat_replication.replay_lsn shows the DR replica's position.
    /// Boxed: a closure stored directly in a Mutex came back wrapped in one more reabstraction thunk on every
    /// read, so each acknowledgement cost more than the last (the benchmark's synchronous rounds found it).
    private let standbyReports = Mutex<StandbyProvider?>(nil)
    private let monitor: Mutex<[UInt64: SystemMonitor]>
    /// The stream links a graceful shutdown drains, and whether it has begun.
    private let stopping = Mutex(StreamLinkStops())
    let startedAt = Date()
    /// Per system, the control socket `walship promote` asks (`ControlSocket`).
    private let controlSockets = Mutex<[UInt64: Channel]>([:])
    /// The address actually bound (differs from the configuration when port 0 was asked for).
    public let boundAddress = Mutex<SocketAddress?>(nil)

    struct LinkDetails {
        var connectedAt: Date
        /// The link passed a fence on condition of proving its timeline (`FenceCheck`): its frames are checked,
        /// so the fence's periodic sweep leaves it open.
        var passedFence = false
    }

    /// Per system: the primary's reported positions (for lag), the link's ups and downs, what was acknowledged.
    struct SystemMonitor {
        var lag = LagTracker()
        var primaryTime: PostgresTimestamp?
        var primaryReportedAt: ContinuousClock.Instant?
        var disconnectedSince: Date?
        var acknowledged: LSN = .invalid
        var acknowledgedAt: Date?
        var senderName: String?
        var synchronous: Bool?
        var fenceRefusedAt: Date?
        var savedProgress: PrimaryProgressRecord?
        /// The mode history's newest entries, as recorded in the spool.
        var mode = CurrentMode()
        /// When anything last showed the primary alive (on this receiver's clock; see `PrimaryContactFacts`).
        var primaryLastHeardAt: Date?
        /// The sender's newest verdict on the primary since the last stream link began.
        var verdict: SenderVerdictRecord?
    }

    public init(configuration: ReceiverConfiguration, logger: Logger) throws {
        self.config = configuration
        self.logger = logger
        self.links = Mutex(StreamLinkRegistry(timeout: configuration.linkTimeout))
        self.spool = try Spool(
            root: configuration.spoolRoot, quota: configuration.spoolQuota, logger: logger,
            fileSystem: configuration.fileSystem)
        let start = Date()
        self.monitor = Mutex(
            Dictionary(
                uniqueKeysWithValues: try spool.openExistingSystems().map {
                    let history = (try? ModeHistory.load(systemDirectory: $0.directory)) ?? []
                    // The last contact before this process started still times the silence, and the figures found
                    // stay in primary.json until a link brings newer ones.
                    let found = (try? PrimaryProgressRecord.load(systemDirectory: $0.directory)) ?? nil
                    return (
                        $0.systemIdentifier,
                        SystemMonitor(
                            disconnectedSince: start, savedProgress: found, mode: CurrentMode(history),
                            primaryLastHeardAt: found?.primaryLastHeardAt)
                    )
                }))
    }

    public func run() async throws {
        let timeout = TimeAmount.nanoseconds(Int64(config.linkTimeout.components.seconds) * 1_000_000_000)
        let server: NIOAsyncChannel<ShipAsyncChannel, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton, childGroup: ShipLinkLoops.group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: config.listenHost, port: config.listenPort) { [tls = config.tls] channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                        return try ShipChannel.configure(channel, linkTimeout: timeout)
                    }
                }
        } catch {
            throw ReceiverStartError(
                "cannot listen on \(config.listenHost):\(config.listenPort): \(error) (hint: is another process using the port? choose another --listen)"
            )
        }
        boundAddress.withLock { $0 = server.channel.localAddress }
        do {
            try ReceiverRecord(
                listen: "\(config.listenHost):\(config.listenPort)", standbyListen: config.standbyListen,
                pid: ProcessInfo.processInfo.processIdentifier, startedAt: startedAt
            ).save(root: config.spoolRoot)
        } catch {
            logger.warning("cannot record the receiver's addresses in the spool", metadata: ["walship.error": "\(error)"])
        }
        logger.notice(
            "receiver listening",
            metadata: [
                "walship.listen": "\(server.channel.localAddress.map(describe) ?? "?")", "walship.spool": "\(config.spoolRoot)",
            ])
        defer {
            for pool in writers.withLock({ Array($0.values) }) + housekeepers.withLock({ Array($0.values) }) {
                pool.shutdownGracefully { _ in }
            }
            closeControlSockets()
        }
        do {
            try await serveUntilStopped(server)
        } catch is CancellationError where Task.isShuttingDownGracefully && !Task.isCancelled {
            // The timers cancelled after the drain end with this: the stop went as planned.
        }
    }

    /// Accepts links until the listening socket fails or a graceful shutdown drains them.
    private func serveUntilStopped(_ server: NIOAsyncChannel<ShipAsyncChannel, Never>) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await self.pruneRegularly() }
            group.addTask { try await self.recordProgressRegularly() }
            group.addTask { try await self.findReplayedTransactionsRegularly() }
            // A graceful shutdown closes the listening socket, which ends the loop once the connections it accepted
            // before are handed on: no new links.
            do {
                try await withGracefulShutdownHandler {
                    try await server.executeThenClose { connections in
                        for try await connection in connections {
                            group.addTask { await self.handle(connection) }
                        }
                    }
                } onGracefulShutdown: {
                    server.channel.close(promise: nil)
                }
            } catch let error where Task.isShuttingDownGracefully {
                logger.debug("the listening socket closed with an error while stopping", metadata: ["walship.error": "\(error)"])
            }
            guard Task.isShuttingDownGracefully else { return }
            await drain()
            // Links still in their handshake, backup links, retention and primary.json's timer: ended, not drained.
            group.cancelAll()
        }
    }

    /// A graceful stop: every stream link writes and fsyncs what it already took, acknowledges it (the journal's
    /// durable end) and closes with a `shuttingDown` refusal; frames read after the stop began are dropped unwritten
    /// and unacknowledged, for the sender to send again to the next receiver. Then each system's durable end is
    /// recorded and logged. Durability does not depend on any of this: only fsynced WAL was ever acknowledged.
    private func drain() async {
        let links = stopping.withLock { stops in
            stops.stopping = true
            return Array(stops.links.values)
        }
        await withTaskGroup(of: Void.self) { group in
            for link in links { group.addTask { await link.drain() } }
        }
        for system in spool.openSystems.sorted(by: { $0.systemIdentifier < $1.systemIdentifier }) {
            await stop(system)
        }
    }

    /// Makes durable whatever an earlier link wrote and did not sync, records primary.json, logs where it stopped.
    private func stop(_ system: SystemSpool) async {
        let id = system.systemIdentifier
        var position = system.position
        if position.written != position.durable {
            do {
                position = try await writerThread(for: id).runIfActive {
                    try system.sync()
                    return system.position
                }
            } catch {
                logger.error(
                    "cannot make the spool's last WAL durable while stopping; it was never acknowledged, and the sender sends it again",
                    metadata: ["walship.system": "\(id)", "walship.error": "\(error)"])
            }
        }
        _ = try? await onItsThread(system) { self.recordProgress(system) }
        var metadata: Logger.Metadata = [
            "walship.system": "\(id)", "walship.durable_lsn": "\(position.durable)", "walship.timeline": "\(position.timeline)",
        ]
        if let failure = system.fsyncFailure { metadata["walship.spool_failure"] = "\(failure)" }
        logger.notice("receiver stopped", metadata: metadata)
    }

    /// Event loops for ship links alone. A synchronous link's loop may wait on the spool's fsync (`afterReads`
    /// in `serve`); the status endpoint and the standbys, on NIO's shared loops, never wait behind it.
    enum ShipLinkLoops {
        static let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
    }

    private func occupy(_ loop: EventLoop, system: UInt64) {
        loopSystems.withLock { $0.linkStarted(on: ObjectIdentifier(loop), system: system) }
    }

    private func vacate(_ loop: EventLoop, system: UInt64) {
        loopSystems.withLock { $0.linkEnded(on: ObjectIdentifier(loop), system: system) }
    }

    private func loop(_ loop: EventLoop, isAlone system: UInt64) -> Bool {
        loopSystems.withLock { $0.carriesOnly(system, on: ObjectIdentifier(loop)) }
    }

    /// Applies retention to every system now and then; a failure is logged, never fatal to receiving.
    private func pruneRegularly() async throws {
        while true {
            try await eachSystemOnItsThread { self.prune($0) }
            try await Task.sleep(for: config.pruneInterval)
        }
    }

    /// Runs `work` for every open system at once, each on that system's housekeeping thread.
    private func eachSystemOnItsThread(_ work: @escaping @Sendable (SystemSpool) -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for system in spool.openSystems {
                group.addTask { try await self.onItsThread(system) { work(system) } }
            }
            try await group.waitForAll()
        }
    }

    /// File work of one system that may wait on its disk, on that system's housekeeping thread.
    private func onItsThread<T: Sendable>(_ system: SystemSpool, _ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await housekeeper(for: system.systemIdentifier).runIfActive(work)
    }

    /// Runs file work that may wait on the disk (fsyncs of small records, directory walks, removals) on NIO's
    /// blocking pool. On the concurrency pool (one thread per core) an fsync stuck behind a busy disk would hold
    /// up every task of the process, the status endpoint's requests among them.
    private func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(work)
    }

    func pruneAll() {
        for system in spool.openSystems { prune(system) }
    }

    private func prune(_ system: SystemSpool) {
        do {
            let plan = try Pruner.prune(
                systemDirectory: system.directory, segmentSize: system.segmentSize,
                retainBackups: config.retainBackups, recoveryWindow: config.recoveryWindow,
                archiveHold: config.archiveHold?(system.systemIdentifier), dryRun: false)
            for warning in plan.reasons where warning.hasPrefix("WARNING") {
                logger.warning("\(warning)", metadata: ["walship.system": "\(system.systemIdentifier)"])
            }
            if !plan.removeBackups.isEmpty || !plan.removeSegments.isEmpty {
                logger.notice(
                    "pruned the spool",
                    metadata: [
                        "walship.system": "\(system.systemIdentifier)", "walship.removed_backups": "\(plan.removeBackups)",
                        "walship.removed_segments": "\(plan.removeSegments.count)",
                        "walship.keep_from": "\(plan.keepFrom.map { "\($0)" } ?? "-")",
                    ])
            }
        } catch {
            logger.error(
                "pruning failed", metadata: ["walship.system": "\(system.systemIdentifier)", "walship.error": "\(error)"])
        }
    }

    // MARK: - One link

    fileprivate enum Work: Sendable {
        /// `block`: the sender's LZ4 block of `bytes`, kept so the spool can store it instead of compressing again.
        case wal(timeline: TimeLineID, start: LSN, bytes: ByteBuffer, block: ByteBuffer?)
        /// `linkEntry`: the mode history's entry for a link let through a fence, held back until this file proved
        /// its timeline and written first.
        case history(timeline: TimeLineID, content: ByteBuffer, linkEntry: ModeHistoryEntry?)
        /// An entry for the system's mode history (audit log), made durable when written.
        case mode(ModeHistoryEntry)
    }

    private func handle(_ connection: ShipAsyncChannel) async {
        let peer = connection.channel.remoteAddress.map(describe) ?? "unknown peer"
        var linkLogger = logger
        linkLogger[metadataKey: "walship.peer"] = "\(peer)"
        do {
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                guard let first = try await iterator.next() else { return }
                var machine = ReceiverLinkStateMachine(
                    allowedSources: config.tls == nil ? [:] : config.allowedSources,
                    acceptFenced: config.acceptFenced, receiverName: config.name)
                guard case .hello(let hello) = first else {
                    // Refused without a refusal frame: a peer that does not begin with a hello may not speak the protocol.
                    if case .closeWithoutAnswer(let refusal) = machine.firstFrameReceived(first, certificateName: nil) {
                        throw refusal
                    }
                    return
                }
                linkLogger[metadataKey: "walship.system"] = "\(hello.systemIdentifier)"
                do {
                    let certificateName = try await peerCertificateName(channel: connection.channel, logger: &linkLogger)
                    let action = machine.firstFrameReceived(first, certificateName: certificateName)
                    try await serve(
                        hello: hello, action, machine: machine, peer: peer, channel: connection.channel,
                        iterator: iterator, outbound: outbound, logger: linkLogger)
                } catch let refusal as Refusal {
                    try? await outbound.write(.refusal(refusal))
                    throw refusal
                }
            }
        } catch let refusal as Refusal where refusal.code == .shuttingDown {
            // Either end stopping on purpose: no problem to report.
            linkLogger.notice("link closed", metadata: ["walship.reason": "\(refusal.message)"])
        } catch let refusal as Refusal {
            // A sender retrying into the same refusal (a full disk, a fence) is logged once a minute, not per try.
            if isNewRefusal(refusal.message) {
                linkLogger.error("link refused or ended", metadata: ["walship.error": "\(refusal.message)"])
            } else {
                linkLogger.debug("link refused again", metadata: ["walship.error": "\(refusal.message)"])
            }
        } catch is LinkEnded {
            linkLogger.notice("sender disconnected")
        } catch is ReceiverStopping {
            linkLogger.info("link closed: the receiver is stopping")
        } catch is CancellationError {
        } catch let error where tlsFailure(error) != nil {
            linkLogger.error(
                "TLS handshake with a sender failed; link refused",
                metadata: [
                    "walship.error": "\(tlsFailure(error)!)",
                    "walship.hint": "a sender without TLS (--insecure), or a certificate not signed by this receiver's --tls-ca",
                ])
        } catch {
            linkLogger.warning("link closed", metadata: ["walship.error": "\(error)"])
        }
    }

    private let recentRefusals = Mutex<[String: ContinuousClock.Instant]>([:])

    private func isNewRefusal(_ message: String) -> Bool {
        let now = ContinuousClock.now
        return recentRefusals.withLock { recent in
            recent = recent.filter { now - $0.value < .seconds(60) }
            guard recent[message] == nil else { return false }
            recent[message] = now
            return true
        }
    }

    /// The client certificate's name, which `--allow-source` binds to a system, when the link runs TLS.
    private func peerCertificateName(channel: Channel, logger: inout Logger) async throws -> String? {
        guard config.tls != nil else { return nil }
        let name = try await channel.nioSSL_peerCertificate().get().flatMap(certificateName)
        logger[metadataKey: "walship.certificate"] = "\(name ?? "?")"
        return name
    }

    /// Carries out the handshake the link's state machine asks for (open the spool, read its fence, claim the
    /// system's stream, find the resume point), then serves the link as a stream or as a backup.
    private func serve(
        hello: Hello, _ firstAction: ReceiverLinkStateMachine.Action, machine: ReceiverLinkStateMachine,
        peer: String, channel: Channel, iterator: NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>, logger: Logger
    ) async throws {
        var machine = machine
        var action = firstAction
        var opened: SystemSpool?
        var claimed: Int?
        defer { if let claimed { release(system: hello.systemIdentifier, linkID: claimed) } }
        let welcome: Welcome
        handshake: while true {
            switch action {
            case .openSpool(let id, let segmentSize):
                let system: SystemSpool
                do { system = try spool.system(id, segmentSize: segmentSize) } catch {
                    action = machine.spoolFailed(.open, error: "\(error)")
                    continue handshake
                }
                opened = system
                do { action = machine.spoolOpened(fence: try fence(of: system)) } catch {
                    action = machine.spoolFailed(.readFence, error: "\(error)")
                }
            case .claimStream(let acceptedFence):
                if let acceptedFence { warnAcceptingFenced(acceptedFence, role: hello.role, logger: logger) }
                do {
                    claimed = try claim(
                        hello: hello, peer: peer, channel: channel, passedFence: machine.fenceCheck != nil, logger: logger)
                    action = machine.streamClaimed()
                } catch let refusal as Refusal {
                    action = machine.streamClaimRefused(refusal)
                }
            case .findResumePoint(let makeDurableFirst, let acceptedFence):
                if let acceptedFence { warnAcceptingFenced(acceptedFence, role: hello.role, logger: logger) }
                guard let system = opened else { preconditionFailure("a resume point before the spool is open") }
                guard makeDurableFirst else {
                    let position = system.position
                    action = machine.resumePointFound(durable: position.durable, timeline: position.timeline)
                    continue handshake
                }
                // Anything written by an earlier link but not yet synced is made durable before we name a resume point.
                do {
                    let position = try await writerThread(for: hello.systemIdentifier).runIfActive {
                        try system.sync()
                        return system.position
                    }
                    action = machine.resumePointFound(durable: position.durable, timeline: position.timeline)
                } catch {
                    action = machine.spoolFailed(.makeDurable, error: "\(error)")
                }
            case .welcome(let answer):
                welcome = answer
                break handshake
            case .refuse(let refusal), .closeWithoutAnswer(let refusal):
                if refusal.code == .fenced {
                    monitor.withLock { $0[hello.systemIdentifier, default: SystemMonitor()].fenceRefusedAt = Date() }
                }
                throw refusal
            case .queueWAL, .queueHistory, .recordMode, .recordVerdict, .keepalive, .beginBackup, .storeBackupData,
                .finishBackup, .none:
                preconditionFailure("\(action) during the handshake")
            }
        }
        guard let system = opened else { preconditionFailure("a welcome before the spool is open") }
        switch hello.role {
        case .backup:
            try await serveBackup(
                welcome, machine: machine, system: system, iterator: iterator, outbound: outbound,
                logger: logger)
        case .verdict:
            try await serveVerdicts(
                welcome, machine: machine, system: system, iterator: iterator, outbound: outbound, logger: logger)
        case .stream:
            guard let linkID = claimed else { preconditionFailure("a stream link welcomed without its claim") }
            try await serveStream(
                welcome, machine: machine, hello: hello, system: system, linkID: linkID, channel: channel,
                iterator: iterator, outbound: outbound, logger: logger)
        }
    }

    /// A stream link: frames are checked and queued on the event loop, written and synced on the system's spool
    /// thread, and acknowledged once durable.
    private func serveStream(
        _ welcome: Welcome, machine: ReceiverLinkStateMachine, hello: Hello, system: SystemSpool,
        linkID: Int, channel: Channel, iterator: NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>, logger: Logger
    ) async throws {
        let writer = writerThread(for: hello.systemIdentifier)
        let rules = SharedLinkStateMachine(machine)
        let queue = BatchQueue<Work>(maxBytes: config.maxQueuedBytes) { ShipChannel.resumeReading(channel) }
        let acks = AckSender(channel: channel)
        // Decompressed chunks go round between the event loop and the spool thread; as many as the queue holds.
        let buffers = BufferPool(maxIdle: max(2, config.maxQueuedBytes / ShipFrame.maxWALChunkBytes))
        // Frames are taken on the event loop and queued for the spool thread directly: a synchronous commit's
        // WAL reaches the thread that fsyncs it without a hop through a task. Set before the welcome, so no
        // frame of this link can reach the async reader first.
        let borrowed = BorrowedWriter(queue: queue)
        occupy(channel.eventLoop, system: hello.systemIdentifier)
        defer { vacate(channel.eventLoop, system: hello.systemIdentifier) }
        let stop = StreamLinkStop(channel: channel, queue: queue)
        defer {
            stopping.withLock { $0.links[linkID] = nil }
            stop.ended.succeed()
        }
        guard stopping.withLock({ $0.register(stop, id: linkID) }) else {
            throw Refusal(code: .shuttingDown, message: "walship receive is stopping")
        }
        try await ShipChannel.setTap(
            on: channel,
            { [self] message in
                // Once the link drains, nothing read is written or acknowledged.
                if stop.isDraining { return .consumed }
                do {
                    guard
                        let (work, bytes) = try interpret(
                            message, rules: rules, system: system, linkID: linkID, acks: acks,
                            buffers: buffers)
                    else {
                        return .consumed
                    }
                    // A synchronous link's frame that brings us to the primary's end (a commit waits on it) is written
                    // here if the spool thread is idle, and so is everything after it in the same socket read. Frames
                    // of a backlog go through the queue, where decoding goes on while the spool thread writes.
                    if borrowed.held
                        || hello.synchronous
                            && borrowed.borrowIfCaughtUp(
                                message, work, onlyIf: { self.loop(channel.eventLoop, isAlone: hello.systemIdentifier) })
                    {
                        try writeInBorrowedRole(work, system: system, buffers: buffers, borrowed: borrowed)
                        return .consumed
                    }
                    return try queue.pushNow(work, bytes: bytes) ? .consumedAndPause : .consumed
                } catch {
                    return .fail(error)
                }
            },
            afterReads: { [self] in
                // One fsync and one ack for all the read brought: group commit, as the spool thread's batches.
                guard borrowed.held else { return nil }
                do {
                    defer { borrowed.giveBack() }
                    try system.sync()
                } catch let error as SpoolError {
                    return refusal(for: error, system: system)
                } catch {
                    return error
                }
                // Also run when the link closes; then there is no one to tell.
                if channel.isActive { acks.send(ack(for: system, at: system.position)) }
                return nil
            })
        // The link's start goes into the mode history ahead of anything it brings: what the sender promised, and
        // for a sender that does not report its mode (protocol version 1), that the mode is unknown from here on.
        let linkEntry = ModeHistoryEntry(
            event: .link, mode: welcome.protocolVersion < 2 ? .unknown : nil, at: Date(),
            timeline: welcome.resumeTimeline, synchronousRequested: hello.synchronous,
            receiverLoss: hello.receiverLoss?.description, protocolVersion: welcome.protocolVersion,
            sender: hello.senderName,
            detail: welcome.protocolVersion < 2
                ? "the sender speaks ship protocol version \(welcome.protocolVersion) and does not report how the primary treats it"
                : nil, recordedAt: Date())
        if machine.fenceCheck != nil {
            // Let through a fence on condition: the link enters the mode history only once it proved its timeline.
            rules.deferLinkEntry(linkEntry)
            logger.notice(
                "a fenced system's link offers the promoted timeline or a newer one; its history files must prove it descends from the promoted timeline",
                metadata: ["walship.sender": "\(hello.senderName)", "walship.timeline": "\(hello.timeline)"])
        } else {
            _ = try queue.pushNow(.mode(linkEntry), bytes: 256)
        }
        try await outbound.write(.welcome(welcome))
        logger.notice(
            "sender connected",
            metadata: [
                "walship.sender": "\(hello.senderName)", "walship.synchronous": "\(hello.synchronous)",
                "walship.resume_lsn": "\(welcome.resumeLSN)", "walship.timeline": "\(welcome.resumeTimeline)",
                "walship.protocol": "\(welcome.protocolVersion)",
            ])

        var iterator = iterator
        try await ShipChannel.runLink(
            channel: channel,
            workers: [
                {
                    do {
                        try await self.writeBatches(
                            queue, system: system, writer: writer, synchronous: hello.synchronous, acks: acks,
                            buffers: buffers)
                    } catch let stopped as ReceiverStopping {
                        // What it took is durable and acknowledged: say why the link ends before it closes.
                        try? await outbound.write(.refusal(Refusal(code: .shuttingDown, message: "walship receive is stopping")))
                        throw stopped
                    }
                }
            ],
            onEnd: { queue.finish($0) },
            reader: {
                // The tap takes every frame; this only waits for the link to end (and would take a frame the
                // tap let through).
                while let message = try await iterator.next() {
                    if let (work, bytes) = try self.interpret(
                        message, rules: rules, system: system, linkID: linkID, acks: acks,
                        buffers: buffers)
                    {
                        try await queue.push(work, bytes: bytes)
                    }
                }
            })
    }

    /// A verdict link: the sender's word on the primary while its stream link is down. Each verdict is held for the
    /// system and acknowledged with an ack of the spool's position; the sender closes the link.
    private func serveVerdicts(
        _ welcome: Welcome, machine: ReceiverLinkStateMachine, system: SystemSpool,
        iterator: NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>, logger: Logger
    ) async throws {
        var machine = machine
        var iterator = iterator
        try await outbound.write(.welcome(welcome))
        while let message = try await iterator.next() {
            switch machine.frameReceived(message) {
            case .recordVerdict(let verdict):
                noteVerdict(verdict, system: system.systemIdentifier, logger: logger)
                try await outbound.write(.ack(ack(for: system, at: system.position)))
            case .keepalive(_, _, let sendAck):
                if sendAck { try await outbound.write(.ack(ack(for: system, at: system.position))) }
            case .refuse(let refusal), .closeWithoutAnswer(let refusal):
                throw refusal
            case .openSpool, .claimStream, .findResumePoint, .welcome, .queueWAL, .queueHistory, .recordMode, .beginBackup,
                .storeBackupData, .finishBackup, .none:
                continue
            }
        }
    }

    /// Holds the sender's verdict, placed on this receiver's clock, and logs a change of it.
    private func noteVerdict(_ verdict: PrimaryVerdict, system: UInt64, logger: Logger) {
        let now = Date()
        func ago(_ millis: UInt64?) -> Date? { millis.map { now.addingTimeInterval(-Double($0) / 1000) } }
        let state: SenderVerdictRecord.State =
            switch verdict.state {
            case .alive: .alive
            case .unanswered: .unanswered
            case .lost: .lost
            case .senderStopped: .senderStopped
            }
        let record = SenderVerdictRecord(
            state: state, receivedAt: now, primaryLastHeardAt: ago(verdict.lastHeardAgeMillis),
            droppedAt: ago(verdict.droppedAgeMillis))
        let previous = monitor.withLock { monitors -> SenderVerdictRecord.State? in
            var m = monitors[system, default: SystemMonitor()]
            let previous = m.verdict?.state
            m.verdict = record
            if let heard = record.primaryLastHeardAt { m.primaryLastHeardAt = max(m.primaryLastHeardAt ?? heard, heard) }
            monitors[system] = m
            return previous
        }
        guard previous != state else { return }
        var metadata: Logger.Metadata = ["walship.verdict": "\(state.rawValue)"]
        if let heard = record.primaryLastHeardAt { metadata["walship.primary_last_heard"] = "\(formatISO8601(heard))" }
        if let dropped = record.droppedAt { metadata["walship.dropped_at"] = "\(formatISO8601(dropped))" }
        logger.notice("the sender's verdict on the primary", metadata: metadata)
    }

    /// A backup link: store the archive and manifest as they come, make the backup visible when whole, and
    /// declare it complete once the stream has brought the spool's durable WAL to its stop LSN.
    private func serveBackup(
        _ welcome: Welcome, machine: ReceiverLinkStateMachine, system: SystemSpool,
        iterator: NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>, logger: Logger
    ) async throws {
        try await outbound.write(.welcome(welcome))
        // While the data arrives, and while it is fsynced, this end has nothing to say; a backup takes far longer
        // than the link timeout, so an ack goes back at the keepalive interval to show the sender this end is alive
        // (an ack is what any walship backup accepts here). Sent from its own task: an answer to the sender's
        // keepalives would queue behind the data, and not come at all during a long fsync.
        let interval = Duration.seconds(max(1, config.linkTimeout.components.seconds / 6))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    try await Task.sleep(for: interval)
                    try await outbound.write(.ack(self.ack(for: system, at: system.position)))
                }
            }
            defer { group.cancelAll() }
            try await storeBackup(machine: machine, system: system, iterator: iterator, outbound: outbound, logger: logger)
        }
    }

    private func storeBackup(
        machine: ReceiverLinkStateMachine, system: SystemSpool,
        iterator: NIOAsyncChannelInboundStream<ShipMessage>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>, logger: Logger
    ) async throws {
        var machine = machine
        var iterator = iterator
        var writer: BackupWriter?
        defer { writer?.abort() }
        // Each piece (up to 1 MiB) is decompressed into a buffer that goes round, as on the WAL path, instead of
        // a fresh allocation per piece.
        let buffers = BufferPool(maxIdle: 2)
        while let message = try await iterator.next() {
            switch machine.frameReceived(message) {
            case .beginBackup(let start):
                writer = try BackupWriter(system: system, label: start.label, startLSN: start.startLSN)
                logger.notice(
                    "backup started", metadata: ["walship.backup": "\(writer!.id)", "walship.start_lsn": "\(start.startLSN)"])
            case .storeBackupData(let data):
                guard let writer else { throw Refusal(code: .protocolViolation, message: "backup data before its start") }
                let bytes: ByteBuffer
                do { bytes = try data.bytes(pool: buffers) } catch {
                    throw Refusal(code: .protocolViolation, message: "refused backup data: \(error)")
                }
                try bytes.withUnsafeReadableBytes {
                    switch data.part {
                    case .archive: try writer.appendArchive($0)
                    case .manifest: try writer.appendManifest($0)
                    }
                }
                if data.compression == .lz4Block { buffers.recycle(bytes) }  // else `bytes` is the frame's payload
            case .finishBackup(let end):
                guard let active = writer else { throw Refusal(code: .protocolViolation, message: "backup end before its start") }
                // Its fsyncs and rename on the system's housekeeping thread; this task waits for them and owns the writer again after.
                nonisolated(unsafe) let finishing = active
                let info = try await onItsThread(system) {
                    try finishing.finish(stopLSN: end.stopLSN, timeline: end.timeline, durable: system.position.durable)
                }
                writer = nil
                logger.notice(
                    "backup stored",
                    metadata: [
                        "walship.backup": "\(info.id)", "walship.stop_lsn": "\(info.stopLSN)",
                        "walship.status": "\(info.status.rawValue)",
                    ])
                try await awaitWAL(for: info, stop: end.stopLSN, system: system, outbound: outbound, logger: logger)
                return
            case .keepalive(_, _, let sendAck):
                if sendAck { try await outbound.write(.ack(ack(for: system, at: system.position))) }
            case .refuse(let refusal), .closeWithoutAnswer(let refusal):
                throw refusal
            case .openSpool, .claimStream, .findResumePoint, .welcome, .queueWAL, .queueHistory, .recordMode, .recordVerdict,
                .none:
                continue
            }
        }
        throw LinkEnded()
    }

    private func awaitWAL(
        for info: BackupInfo, stop: LSN, system: SystemSpool,
        outbound: NIOAsyncChannelOutboundWriter<ShipMessage>, logger: Logger
    ) async throws {
        var durable = system.position.durable
        while durable < stop {
            try await outbound.write(.backupStatus(BackupStatus(backupID: info.id, state: .waitingForWAL, durableLSN: durable)))
            durable = await system.waitForDurable(beyond: durable, timeout: .seconds(5))
            try Task.checkCancellation()
        }
        if info.status != .complete {
            _ = try await onItsThread(system) { try BackupCatalog.markComplete(systemDirectory: system.directory, id: info.id) }
        }
        logger.notice("backup complete: the spool holds all WAL it needs", metadata: ["walship.backup": "\(info.id)"])
        try await onItsThread(system) { self.prune(system) }
        try await outbound.write(.backupStatus(BackupStatus(backupID: info.id, state: .complete, durableLSN: durable)))
    }

    /// What one frame on a streaming link asks of the spool thread, if anything; the rest (keepalives,
    /// the link's liveness, the primary's position) is dealt with here. Throws the refusal that ends the link.
    private func interpret(
        _ message: ShipMessage, rules: SharedLinkStateMachine, system: SystemSpool, linkID: Int,
        acks: AckSender, buffers: BufferPool
    ) throws -> (Work, bytes: Int)? {
        touch(system: system.systemIdentifier, linkID: linkID)
        switch rules.frameReceived(message) {
        case .queueWAL(let data):
            let bytes: ByteBuffer
            do { bytes = try data.walBytes(pool: buffers) } catch {
                throw Refusal(code: .invalidWAL, message: "refused a WAL frame at \(data.startLSN): \(error)")
            }
            notePrimary(system, lsn: data.primaryEndLSN, sendTime: data.primarySendTime)
            let block = data.compression == .lz4Block ? data.payload : nil
            return (
                .wal(timeline: data.timeline, start: data.startLSN, bytes: bytes, block: block),
                bytes.readableBytes + (block?.readableBytes ?? 0)
            )
        case .keepalive(let primaryEnd, let sendTime, let sendAck):
            if let primaryEnd { notePrimary(system, lsn: primaryEnd, sendTime: sendTime) }
            if sendAck { acks.send(ack(for: system, at: system.position)) }
            return nil
        case .queueHistory(let history, let admitsLink):
            var linkEntry: ModeHistoryEntry?
            if admitsLink {
                linkEntry = rules.takeDeferredLinkEntry()
                logger.notice(
                    "a fenced system's link proved its timeline descends from the promoted timeline; its WAL passes the fence",
                    metadata: [
                        "walship.system": "\(system.systemIdentifier)", "walship.timeline": "\(history.timeline)",
                    ])
            }
            return (
                .history(timeline: history.timeline, content: history.content, linkEntry: linkEntry),
                history.content.readableBytes
            )
        case .recordMode(let change):
            let entry = ModeHistoryEntry(
                event: .mode, mode: change.mode, at: Date(timeIntervalSince1970: change.observedAt.unixSeconds),
                lsn: change.lsn.isValid ? "\(change.lsn)" : nil, timeline: system.position.timeline,
                syncState: change.syncState.isEmpty ? nil : change.syncState,
                synchronousCommit: change.synchronousCommit.isEmpty ? nil : change.synchronousCommit,
                exposureBytes: change.mode == .degraded ? change.exposureBytes : nil, detail: change.detail,
                recordedAt: Date())
            return (.mode(entry), 256)
        case .refuse(let refusal), .closeWithoutAnswer(let refusal):
            if refusal.code == .fenced {
                monitor.withLock { $0[system.systemIdentifier, default: SystemMonitor()].fenceRefusedAt = Date() }
            }
            throw refusal
        case .openSpool, .claimStream, .findResumePoint, .welcome, .beginBackup, .storeBackupData, .finishBackup,
            .recordVerdict, .none:
            return nil
        }
    }

    /// Applies queued work in batches on the system's spool thread, for the whole link: append everything,
    /// fsync (see `asyncSyncBytes`), then one ack with the written and durable ends, sent from that thread.
    private func writeBatches(
        _ queue: BatchQueue<Work>, system: SystemSpool, writer: NIOThreadPool, synchronous: Bool,
        acks: AckSender, buffers: BufferPool
    ) async throws {
        let syncBytes = UInt64(config.asyncSyncBytes)
        let syncInterval = config.asyncSyncInterval
        do {
            try await writer.runToCompletion { () throws -> Void in
                var lastSync = ContinuousClock.now
                while true {
                    // Taken off the batch one by one, so a stored chunk's buffer is referenced only here when
                    // it goes back to the pool.
                    var batch: [Work]
                    do {
                        batch = try queue.takeAllBlocking()
                    } catch let stopped as ReceiverStopping {
                        // The receiver drains: everything taken is written; make it durable and say so.
                        try system.sync()
                        acks.send(self.ack(for: system, at: system.position))
                        throw stopped
                    }
                    batch.reverse()
                    do {
                        while let work = batch.popLast() { try self.apply(work, to: system, buffers: buffers) }
                    } catch {
                        // Keep what was good: make the valid prefix of this batch durable before giving up.
                        _ = try? system.sync()
                        throw error
                    }
                    let position = system.position
                    let unsynced = position.written.bytesAfter(position.durable)
                    if synchronous || queue.isEmpty || unsynced >= syncBytes || lastSync.duration(to: .now) >= syncInterval {
                        try system.sync()
                        lastSync = .now
                    }
                    acks.send(self.ack(for: system, at: system.position))
                }
            }
        } catch let error as SpoolError {
            throw refusal(for: error, system: system)
        }
    }

    /// Appends one item of a synchronous link right here, on the event loop, in the role of the spool thread it
    /// borrowed; the fsync and the ack follow once the socket read is through (`afterReads` in `serve`). The
    /// commit's acknowledgement then leaves without two thread switches through the spool thread. Only while the
    /// loop carries this system's links alone: another system's link on it would wait behind this disk. Ship
    /// links have event loops of their own (`ShipLinkLoops`), so the fsync holds up no status request or standby.
    private func writeInBorrowedRole(_ work: Work, system: SystemSpool, buffers: BufferPool, borrowed: BorrowedWriter) throws {
        do {
            try apply(work, to: system, buffers: buffers)
        } catch {
            _ = try? system.sync()  // keep the valid prefix, as the spool thread does
            borrowed.giveBack()
            if let error = error as? SpoolError { throw refusal(for: error, system: system) }
            throw error
        }
    }

    /// One queued item into the spool (not yet durable).
    private func apply(_ work: Work, to system: SystemSpool, buffers: BufferPool) throws {
        switch work {
        case .wal(let timeline, let start, let bytes, let block):
            try bytes.withUnsafeReadableBytes { raw in
                guard let block else { return try system.append(timeline: timeline, startLSN: start, bytes: raw) }
                try block.withUnsafeReadableBytes {
                    try system.append(timeline: timeline, startLSN: start, bytes: raw, compressedBlock: $0)
                }
            }
            if block != nil { buffers.recycle(bytes) }  // else `bytes` is the frame's payload
        case .history(let timeline, let content, let linkEntry):
            if let linkEntry {
                try system.record(linkEntry)
                monitor.withLock { $0[system.systemIdentifier, default: SystemMonitor()].mode.add(linkEntry) }
            }
            try system.storeHistory(timeline: timeline, content: Array(content.readableBytesView))
        case .mode(let entry):
            try system.record(entry)
            monitor.withLock { $0[system.systemIdentifier, default: SystemMonitor()].mode.add(entry) }
            logger.notice(
                "replication mode recorded",
                metadata: [
                    "walship.system": "\(system.systemIdentifier)", "walship.mode": "\(entry.mode?.rawValue ?? "unknown")",
                    "walship.lsn": "\(entry.lsn ?? "?")", "walship.detail": "\(entry.detail ?? "")",
                ])
        }
    }

    /// What the sender is told when the spool refuses or fails.
    private func refusal(for error: SpoolError, system: SystemSpool) -> Refusal {
        let code: Refusal.Code =
            switch error.kind {
            case .invalidWAL: .invalidWAL
            case .notContiguous: .notContiguous
            case .mismatch: .timelineMismatch
            case .io, .fsyncFailed, .diskFull, .corrupt, .locked, .acknowledgedWALMissing: .spoolFailure
            }
        if error.kind == .fsyncFailed && system.stoppedByFsyncFailure {
            logger.critical(
                "fsync of the journal failed: this system's spool stops acknowledging until walship receive is restarted (hint: check the disk and the kernel log)",
                metadata: ["walship.system": "\(system.systemIdentifier)", "walship.error": "\(error)"])
        } else if error.kind == .fsyncFailed {
            logger.error(
                "fsync failed while completing a segment: its journal still holds the WAL, and completion is tried again with the next WAL (hint: check the disk and the kernel log)",
                metadata: ["walship.system": "\(system.systemIdentifier)", "walship.error": "\(error)"])
        }
        return Refusal(code: code, message: error.message)
    }

    public func setStandbyProvider(_ provider: @escaping @Sendable (UInt64) -> [StandbyReport]) {
        standbyReports.withLock { $0 = StandbyProvider(reports: provider) }
    }

    private func standbys(of system: UInt64) -> [StandbyReport] {
        standbyReports.withLock { $0 }?.reports(system) ?? []
    }

    private func ack(for system: SystemSpool, at position: SpoolPosition) -> Ack {
        let replay = standbys(of: system.systemIdentifier).max { $0.replayed < $1.replayed }
        monitor.withLock {
            $0[system.systemIdentifier, default: SystemMonitor()].acknowledged = position.durable
            $0[system.systemIdentifier, default: SystemMonitor()].acknowledgedAt = Date()
        }
        return Ack(
            timeline: position.timeline, writtenLSN: position.written, durableLSN: position.durable,
            replayedLSN: replay?.replayed ?? .invalid, replayTime: replay?.reportedAt ?? PostgresTimestamp(rawValue: 0),
            receiverTime: .now())
    }

    // MARK: - Fencing

    /// The system's FENCED record (left by a promotion at the DR site), as the link's state machine sees it.
    private func fence(of system: SystemSpool) throws -> ReceiverLinkStateMachine.Fence? {
        try FenceRecord.load(systemDirectory: system.directory).map {
            .init(
                promotedAt: formatISO8601($0.promotedAt), promotedTimeline: $0.promotedTimeline,
                recordPath: FenceRecord.path(system.directory), lineage: $0.lineage)
        }
    }

    private func warnAcceptingFenced(_ fence: ReceiverLinkStateMachine.Fence, role: LinkRole, logger: Logger) {
        logger.warning(
            "accepting \(role == .backup ? "a base backup" : "WAL") for a fenced system because of --force",
            metadata: ["walship.promoted_at": "\(fence.promotedAt)"])
    }

    // MARK: - Link registry

    private func claim(hello: Hello, peer: String, channel: Channel, passedFence: Bool, logger: Logger) throws -> Int {
        if stopping.withLock({ $0.stopping }) { throw Refusal(code: .shuttingDown, message: "walship receive is stopping") }
        let id = nextLinkID.wrappingAdd(1, ordering: .relaxed).oldValue
        let link = StreamLinkRegistry<Channel>.Link(
            id: id, peer: peer, senderName: hello.senderName,
            synchronous: hello.synchronous, handle: channel, lastFrame: .now)
        // Before the claim: the fence's sweep must never see this link without knowing it passed the fence.
        linkDetails.withLock { $0[id] = LinkDetails(connectedAt: Date(), passedFence: passedFence) }
        switch links.withLock({ $0.claim(system: hello.systemIdentifier, link: link, now: .now) }) {
        case .refused(let refusal):
            linkDetails.withLock { $0[id] = nil }
            throw refusal
        case .accepted(let stale):
            monitor.withLock {
                $0[hello.systemIdentifier, default: SystemMonitor()].disconnectedSince = nil
                $0[hello.systemIdentifier, default: SystemMonitor()].senderName = hello.senderName
                $0[hello.systemIdentifier, default: SystemMonitor()].synchronous = hello.synchronous
            }
            // A verdict from before this link says nothing about the primary any more.
            monitor.withLock { $0[hello.systemIdentifier]?.verdict = nil }
            if let stale {
                logger.warning("replacing a silent link that exceeded the link timeout")
                stale.close(promise: nil)
            }
            return id
        }
    }

    private func release(system: UInt64, linkID: Int) {
        links.withLock { $0.release(system: system, id: linkID) }
        linkDetails.withLock { $0[linkID] = nil }
        if links.withLock({ $0.links[system] == nil }) {
            monitor.withLock { $0[system, default: SystemMonitor()].disconnectedSince = Date() }
        }
    }

    private func touch(system: UInt64, linkID: Int) {
        let now = ContinuousClock.now
        links.withLock { $0.touch(system: system, id: linkID, now: now) }
    }

    private func notePrimary(_ system: SystemSpool, lsn: LSN, sendTime: PostgresTimestamp) {
        let now = ContinuousClock.now
        let wall = Date().timeIntervalSince1970
        monitor.withLock {
            $0[system.systemIdentifier, default: SystemMonitor()].lag
                .primaryReported(lsn: lsn, primaryTime: sendTime.unixSeconds, arrivedAt: now, localWallClock: wall)
            $0[system.systemIdentifier, default: SystemMonitor()].primaryTime = sendTime
            $0[system.systemIdentifier, default: SystemMonitor()].primaryReportedAt = now
            $0[system.systemIdentifier, default: SystemMonitor()].primaryLastHeardAt = Date()
        }
    }

    /// Writes each system's primary.json about once a second when it changed (what promote measures RPO
    /// against), forgets lag points every stage has passed, and cuts links of systems fenced meanwhile.
    private func recordProgressRegularly() async throws {
        var round = 0
        while true {
            // The spool's own size, every 15 s: a directory walk, kept off the status request path.
            if round % 15 == 0 { try await offThePool { self.measureDiskUsage() } }
            round += 1
            await openControlSockets()
            try await Task.sleep(for: .seconds(1))
            // primary.json is written and fsynced: off the concurrency pool, each system on its own thread.
            try await eachSystemOnItsThread { self.recordProgress($0) }
        }
    }

    private func recordProgress(_ system: SystemSpool) {
        let id = system.systemIdentifier
        let position = system.position
        let replayed = standbys(of: id).map(\.replayed).min()
        let (record, saved) = monitor.withLock { monitors -> (PrimaryProgressRecord, PrimaryProgressRecord?) in
            var m = monitors[id, default: SystemMonitor()]
            m.lag.forget(upTo: min(position.durable, replayed ?? position.durable))
            let record = PrimaryProgressRecord(
                primaryLSN: m.lag.primaryLSN.isValid ? m.lag.primaryLSN.description : nil,
                primaryTime: m.primaryTime.map { Date(timeIntervalSince1970: $0.unixSeconds) }, timeline: position.timeline,
                acknowledgedLSN: m.acknowledged.isValid ? m.acknowledged.description : nil, acknowledgedAt: m.acknowledgedAt,
                senderName: m.senderName, synchronous: m.synchronous, updatedAt: m.savedProgress?.updatedAt ?? Date(),
                primaryLastHeardAt: m.primaryLastHeardAt,
                linkTimeoutSeconds: config.linkTimeout / .seconds(1)
            ).carryingOver(m.savedProgress)
            monitors[id] = m
            return (record, m.savedProgress)
        }
        if record != saved {
            var fresh = record
            fresh.updatedAt = Date()
            do {
                try fresh.save(systemDirectory: system.directory)
                monitor.withLock { $0[id]?.savedProgress = fresh }
            } catch {
                logger.warning(
                    "cannot record the primary's progress", metadata: ["walship.system": "\(id)", "walship.error": "\(error)"])
            }
        }
        if !config.acceptFenced, FenceRecord.exists(systemDirectory: system.directory),
            let link = links.withLock({ $0.links[id] }), linkDetails.withLock({ $0[link.id]?.passedFence }) != true
        {
            logger.warning(
                "the system was fenced by a promotion; closing the old primary's link", metadata: ["walship.system": "\(id)"])
            link.handle.close(promise: nil)
        }
    }

    /// A control socket for every open system that has none yet (a system is opened by its first link too).
    private func openControlSockets() async {
        for system in spool.openSystems {
            let id = system.systemIdentifier
            guard controlSockets.withLock({ $0[id] == nil }) else { continue }
            let path = ControlSocket.path(systemDirectory: system.directory)
            do {
                let channel = try await ControlSocket.listen(
                    at: path, readiness: { self.readiness(of: id) },
                    standbys: {
                        self.standbys(of: id).map {
                            StandbyPresence(name: $0.recordName ?? $0.name, applicationName: $0.name, connected: $0.connected)
                        }
                    })
                controlSockets.withLock { $0[id] = channel }
            } catch {
                // Tried again next second; logged once a minute.
                if isNewRefusal("control socket \(id): \(error)") {
                    logger.warning(
                        "cannot open the control socket; walship promote falls back to primary.json",
                        metadata: ["walship.system": "\(id)", "walship.path": "\(path)", "walship.error": "\(error)"])
                }
            }
        }
    }

    /// Closes the control sockets and removes their files: a promote asking after this reads primary.json.
    private func closeControlSockets() {
        let sockets = controlSockets.withLock { sockets in
            defer { sockets = [:] }
            return sockets
        }
        for (id, channel) in sockets {
            channel.close(promise: nil)
            if let system = spool.openSystems.first(where: { $0.systemIdentifier == id }) {
                unlink(ControlSocket.path(systemDirectory: system.directory))
            }
        }
    }

    private func writerThread(for system: UInt64) -> NIOThreadPool { Self.thread(for: system, in: writers) }

    private func housekeeper(for system: UInt64) -> NIOThreadPool { Self.thread(for: system, in: housekeepers) }

    private static func thread(for system: UInt64, in pools: borrowing Mutex<[UInt64: NIOThreadPool]>) -> NIOThreadPool {
        pools.withLock { pools in
            if let pool = pools[system] { return pool }
            let pool = NIOThreadPool(numberOfThreads: 1)
            pool.start()
            pools[system] = pool
            return pool
        }
    }

    // MARK: - Status

    private let diskUsage = Mutex<UInt64?>(nil)
    /// Per system: what the standbys replayed up to, and the last transaction end found there (`lastReplayed`),
    /// read from the spool once a second off the status path (`findReplayedTransactions`).
    private let replayedTransactions = Mutex<[UInt64: ReplayedTransactions]>([:])
    private let lastReplayed = Mutex<[UInt64: TransactionEnd]>([:])

    /// The status document (without alerts and health, which the monitor adds).
    public var status: StatusDocument {
        let now = ContinuousClock.now
        let wallNow = Date()
        let capacity = spool.capacity
        let links = self.links.withLock { $0.links }
        let details = self.linkDetails.withLock { $0 }
        let monitors = self.monitor.withLock { $0 }
        let systems =
            spool.openSystems.sorted { $0.systemIdentifier < $1.systemIdentifier }.map { system in
                let id = system.systemIdentifier
                let p = system.position
                let link = links[id]
                let m = monitors[id] ?? SystemMonitor(disconnectedSince: startedAt)
                let reports = standbys(of: id)
                let replayed = reports.map(\.replayed).max() ?? .invalid
                var standbys = reports.map {
                    StatusDocument.Standby(
                        name: $0.name, connected: $0.connected, replayedLSN: $0.replayed.description,
                        updatedAt: Date(timeIntervalSince1970: $0.reportedAt.unixSeconds))
                }
                // Standbys served before this process started, as recorded in the spool.
                for record in (try? StandbyRegistry.list(systemDirectory: system.directory)) ?? []
                where !standbys.contains(where: { $0.name == record.name }) {
                    standbys.append(
                        .init(name: record.name, connected: false, replayedLSN: record.replayedLSN, updatedAt: record.updatedAt))
                }
                var fence: StatusDocument.Fence?
                if let record = try? FenceRecord.load(systemDirectory: system.directory) {
                    fence = .init(
                        promotedAt: record.promotedAt, promotedTimeline: record.promotedTimeline,
                        replayedLSN: record.replayedLSN, lastRefusedAt: m.fenceRefusedAt,
                        parentTimeline: record.parentTimeline, switchPoint: record.switchPoint,
                        lineageRecorded: record.lineage != nil)
                }
                var status = StatusDocument.SystemStatus(
                    systemIdentifier: String(id), timeline: p.timeline,
                    link: .init(
                        connected: link != nil, peer: link?.peer, senderName: link?.senderName ?? m.senderName,
                        synchronous: link?.synchronous ?? m.synchronous,
                        connectedAt: link.flatMap { details[$0.id]?.connectedAt },
                        disconnectedSince: link == nil ? m.disconnectedSince : nil,
                        lastMessageAgeSeconds: link.map { roundedSeconds(now - $0.lastFrame) },
                        lastPrimaryMessageAgeSeconds: m.primaryReportedAt.map { roundedSeconds(now - $0) }),
                    // The receiver cannot see what the sender has sent: that stage has no position here.
                    chain: [
                        (StatusDocument.StageName.primary, m.lag.primaryLSN), (.sent, LSN.invalid), (.received, p.written),
                        (.durable, p.durable), (.replayed, replayed),
                    ].map { m.lag.stage($0, at: $1, now: now) },
                    clockSkewSeconds: m.lag.clockSkewSeconds, fence: fence, standbys: standbys)
                if let latest = m.mode.latest, let mode = latest.mode, let since = m.mode.since {
                    let requested = m.mode.link?.synchronousRequested
                    status.mode = .init(
                        mode: mode.rawValue, since: since, synchronousRequested: requested, syncState: latest.syncState,
                        receiverLoss: m.mode.link?.receiverLoss,
                        notHonouredSince: requested == true && mode != .sync && mode != .degraded ? since : nil,
                        detail: latest.detail)
                }
                status.promotion = readiness(of: id, monitor: m, link: link, now: now, wallNow: wallNow)
                if let last = lastReplayed.withLock({ $0[id] }), last.endLSN <= replayed {
                    status.lastReplayedCommitTime = Date(timeIntervalSince1970: last.time.unixSeconds)
                    status.lastReplayedCommitLSN = last.endLSN.description
                }
                // Backup ids are their UTC start times, so the last complete one is the newest.
                if let newest = ((try? BackupCatalog.list(systemDirectory: system.directory)) ?? []).last(where: {
                    $0.status == .complete
                }) {
                    status.newestBackup = .init(id: newest.id, takenAt: newest.createdAt, stopLSN: newest.stopLSN)
                }
                status.spoolFailure = system.fsyncFailure.map {
                    "\($0) (hint: check the disk and the kernel log, then restart walship receive: it re-reads the spool from disk)"
                }
                return status
            }
            + spool.refusedSystems.sorted { $0.key < $1.key }.map { id, error in
                var status = StatusDocument.SystemStatus(
                    systemIdentifier: String(id), timeline: nil, link: .init(connected: false, disconnectedSince: startedAt),
                    chain: [])
                status.spoolFailure = error.message
                return status
            }
        return StatusDocument(
            role: "receiver", version: walshipVersion, host: ProcessInfo.processInfo.hostName, generatedAt: wallNow,
            process: .init(
                pid: ProcessInfo.processInfo.processIdentifier, startedAt: startedAt,
                residentMemoryBytes: residentMemoryBytes()),
            state: "listening", stateSince: startedAt, systems: systems,
            spool: .init(
                path: config.spoolRoot, totalBytes: capacity?.total, freeBytes: capacity?.free,
                usedBytes: diskUsage.withLock { $0 }),
            receiver: .init(listen: "\(config.listenHost):\(config.listenPort)", standbyListen: config.standbyListen))
    }

    /// Once a second, on the blocking pool and in a loop of its own: reading WAL never holds up a status request,
    /// a link, or the primary.json the progress loop writes.
    private func findReplayedTransactionsRegularly() async throws {
        while true {
            try await Task.sleep(for: .seconds(1))
            try await offThePool { self.findReplayedTransactions() }
        }
    }

    /// Reads each system's WAL up to what its standbys replayed, for the commit time of the last transaction there.
    private func findReplayedTransactions() {
        for system in spool.openSystems {
            let id = system.systemIdentifier
            guard let replayed = standbys(of: id).map(\.replayed).max(), replayed.isValid else { continue }
            let found = replayedTransactions.withLock { trackers in
                let tracker = trackers[id] ?? ReplayedTransactions(spool: system)
                trackers[id] = tracker
                return tracker.lastTransaction(replayedUpTo: replayed)
            }
            lastReplayed.withLock { $0[id] = found }
        }
    }

    /// Whether promoting this system's DR replica is safe as far as this receiver knows (`PromotionReadiness`).
    func readiness(of system: UInt64) -> ReadinessReport {
        let link = links.withLock { $0.links[system] }
        let m = monitor.withLock { $0[system] } ?? SystemMonitor(disconnectedSince: startedAt)
        return readiness(of: system, monitor: m, link: link, now: .now, wallNow: Date())
    }

    private func readiness(
        of system: UInt64, monitor m: SystemMonitor, link: StreamLinkRegistry<Channel>.Link?, now: ContinuousClock.Instant,
        wallNow: Date
    ) -> ReadinessReport {
        ReadinessReport.assess(
            systemIdentifier: String(system), source: "receiver", now: wallNow, linkConnected: link != nil,
            linkLastFrameAt: link.map { wallNow.addingTimeInterval(-((now - $0.lastFrame) / .seconds(1))) },
            linkSilentSince: m.disconnectedSince, primaryLastHeardAt: m.primaryLastHeardAt,
            linkTimeoutSeconds: config.linkTimeout / .seconds(1), receiverLoss: m.mode.link?.receiverLoss,
            senderProtocolVersion: m.mode.link?.protocolVersion, verdict: m.verdict, mode: m.mode.mode?.rawValue,
            modeSince: m.mode.since)
    }

    func measureDiskUsage() {
        let used = spool.diskUsage()
        diskUsage.withLock { $0 = used }
    }
}

/// `10.0.0.5:54012` or `[::1]:54012`, not NIO's `[IPv4]10.0.0.5/10.0.0.5:54012`.
func describe(_ address: SocketAddress) -> String {
    guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
    return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
}

/// The standby endpoint's reports of one system's standbys, behind a class so the closure is stored once.
final class StandbyProvider: Sendable {
    let reports: @Sendable (UInt64) -> [StandbyReport]
    init(reports: @escaping @Sendable (UInt64) -> [StandbyReport]) { self.reports = reports }
}

/// One standby's reported progress, as the standby endpoint tracks it.
public struct StandbyReport: Sendable {
    public var name: String
    public var connected: Bool
    public var replayed: LSN
    /// The standby's clock when it reported.
    public var reportedAt: PostgresTimestamp
    /// The name its record in the spool is kept under (its slot, else `name`), for `walship standby forget`.
    public var recordName: String?

    public init(name: String, connected: Bool, replayed: LSN, reportedAt: PostgresTimestamp, recordName: String? = nil) {
        self.name = name
        self.connected = connected
        self.replayed = replayed
        self.reportedAt = reportedAt
        self.recordName = recordName
    }
}

public struct ReceiverStartError: ClassifiedFailure, CustomStringConvertible {
    public var failureKind: FailureKind { .setUp }
    public let description: String
    init(_ description: String) { self.description = description }
}

/// A link's hold on its spool thread's role (`BatchQueue.borrowIdleWriter`), taken by the event loop for the
/// frames of one socket read. Only touched on the link's event loop.
private final class BorrowedWriter: @unchecked Sendable {
    private let queue: BatchQueue<Receiver.Work>
    private(set) var held = false

    init(queue: BatchQueue<Receiver.Work>) { self.queue = queue }

    /// Borrows the role for a WAL frame that ends at or past the primary's end of WAL, if the spool thread is
    /// parked with nothing queued and `allowed` (asked only for such a frame, so most frames take no lock for it).
    func borrowIfCaughtUp(_ message: ShipMessage, _ work: Receiver.Work, onlyIf allowed: () -> Bool) -> Bool {
        guard case .walData(let data) = message, case .wal(_, let start, let wal, _) = work,
            start.advanced(by: UInt64(wal.readableBytes)) >= data.primaryEndLSN, allowed(), queue.borrowIdleWriter()
        else { return false }
        held = true
        return true
    }

    func giveBack() {
        guard held else { return }
        held = false
        queue.returnWriter()
    }
}

/// A stream link's state machine, shared by the event loop's tap and the link's reader task.
private final class SharedLinkStateMachine: Sendable {
    private let machine: Mutex<ReceiverLinkStateMachine>
    private let deferredLinkEntry = Mutex<ModeHistoryEntry?>(nil)

    init(_ machine: ReceiverLinkStateMachine) { self.machine = Mutex(machine) }

    /// Holds the link's mode history entry until the link proves its timeline at the fence.
    func deferLinkEntry(_ entry: ModeHistoryEntry) { deferredLinkEntry.withLock { $0 = entry } }

    func takeDeferredLinkEntry() -> ModeHistoryEntry? {
        deferredLinkEntry.withLock { entry in
            defer { entry = nil }
            return entry
        }
    }

    func frameReceived(_ message: ShipMessage) -> ReceiverLinkStateMachine.Action {
        machine.withLock { $0.frameReceived(message) }
    }
}

/// Which systems' links each ship-link event loop carries, and how many of each: a link may write and fsync
/// on its loop only while the loop is its system's alone, so no other system's frames wait behind its disk.
struct LoopOccupancy {
    private var systems: [ObjectIdentifier: [UInt64: Int]] = [:]

    mutating func linkStarted(on loop: ObjectIdentifier, system: UInt64) {
        systems[loop, default: [:]][system, default: 0] += 1
    }

    mutating func linkEnded(on loop: ObjectIdentifier, system: UInt64) {
        guard let count = systems[loop]?[system] else { return }
        systems[loop]?[system] = count > 1 ? count - 1 : nil
        if systems[loop]?.isEmpty == true { systems[loop] = nil }
    }

    /// Whether `loop` carries links of `system` and of no other.
    func carriesOnly(_ system: UInt64, on loop: ObjectIdentifier) -> Bool {
        systems[loop].map { Array($0.keys) == [system] } ?? false
    }
}

/// The receiver is draining: the link's queue is finished with this once the event loop stopped taking frames.
struct ReceiverStopping: Error, CustomStringConvertible {
    var description: String { "walship receive is stopping" }
}

/// The stream links to drain when the receiver stops, and whether it has begun stopping (then no link registers).
private struct StreamLinkStops {
    var stopping = false
    var links: [Int: StreamLinkStop] = [:]

    mutating func register(_ link: StreamLinkStop, id: Int) -> Bool {
        guard !stopping else { return false }
        links[id] = link
        return true
    }
}

/// How one stream link is drained: its event loop stops taking frames, then its queue is finished, so the spool
/// thread writes, fsyncs and acknowledges what was taken before it ends the link.
private final class StreamLinkStop: Sendable {
    let channel: Channel
    let queue: BatchQueue<Receiver.Work>
    /// Succeeded when the link's serving has ended.
    let ended: EventLoopPromise<Void>
    /// Set and read on the channel's event loop only (the tap runs there).
    private let draining = Atomic<Bool>(false)

    init(channel: Channel, queue: BatchQueue<Receiver.Work>) {
        self.channel = channel
        self.queue = queue
        self.ended = channel.eventLoop.makePromise()
    }

    var isDraining: Bool { draining.load(ordering: .relaxed) }

    func drain() async {
        // On the event loop, between two socket reads: no frame is half handled and the spool thread's role is not lent.
        try? await channel.eventLoop.submit { self.draining.store(true, ordering: .relaxed) }.get()
        queue.finish(ReceiverStopping())
        try? await ended.futureResult.get()
    }
}
