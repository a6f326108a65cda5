import Dispatch
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// What a long-running command does with its stop signals (SIGTERM, SIGINT). The first starts a drain, which may
/// take at most `limit`; a second signal, or the limit passing, ends the process at once and non-zero: a stuck disk
/// or network must not hold up systemd's stop. Durability never depends on the drain (nothing is acknowledged
/// before it is fsynced); a drain only spares the other end a reconnect and a resend.
public struct StopSignalStateMachine: Sendable {
    public enum State: Equatable, Sendable {
        case running
        case draining(signal: Int32, deadline: ContinuousClock.Instant)
        /// The services have ended (drained, or failed): signals no longer change anything.
        case finished
        case exiting(status: Int32)
    }

    public enum Action: Equatable, Sendable {
        /// Ask the services to drain; call `deadlineReached` once `deadline` has come.
        case beginDrain(deadline: ContinuousClock.Instant)
        /// End the process now with `status`, after logging `reason`.
        case exitNow(status: Int32, reason: String)
        case none
    }

    /// The exit status when the drain took longer than its limit.
    public static let drainTooLongStatus: Int32 = 1

    public private(set) var state = State.running
    public let limit: Duration

    public init(limit: Duration) { self.limit = limit }

    public mutating func signalReceived(_ signal: Int32, now: ContinuousClock.Instant) -> Action {
        switch state {
        case .running:
            let deadline = now + limit
            state = .draining(signal: signal, deadline: deadline)
            return .beginDrain(deadline: deadline)
        case .draining(let first, _):
            // 128 + N: the status a shell reports for a process the signal ended.
            let status = 128 + signal
            state = .exiting(status: status)
            return .exitNow(
                status: status,
                reason:
                    "\(signalName(signal)) during the stop that \(signalName(first)) began: exiting at once without finishing it (only fsynced WAL was ever acknowledged, so nothing acknowledged is lost)"
            )
        case .finished, .exiting:
            return .none
        }
    }

    public mutating func deadlineReached(now: ContinuousClock.Instant) -> Action {
        guard case .draining(_, let deadline) = state, now >= deadline else { return .none }
        state = .exiting(status: Self.drainTooLongStatus)
        return .exitNow(
            status: Self.drainTooLongStatus,
            reason:
                "the stop did not finish within \(limit.components.seconds) s; exiting without it (hint: a disk or a network that does not answer; only fsynced WAL was ever acknowledged, so nothing acknowledged is lost)"
        )
    }

    public mutating func servicesEnded() {
        if case .exiting = state { return }
        state = .finished
    }
}

/// SIGTERM, SIGINT and other names for log lines.
public func signalName(_ signal: Int32) -> String {
    switch signal {
    case SIGTERM: "SIGTERM"
    case SIGINT: "SIGINT"
    case SIGHUP: "SIGHUP"
    case SIGQUIT: "SIGQUIT"
    default: "signal \(signal)"
    }
}

/// Runs a command's services under one `ServiceGroup` until they fail or a stop signal drains them: SIGTERM or SIGINT
/// shuts them down gracefully, in the reverse of their order here, each waiting for the one after it. Returns
/// normally after a drained stop (exit status 0) and throws the first failure otherwise. A second signal, or a drain
/// longer than `drainLimit`, ends the process at once (`StopSignalStateMachine`).
public func runUntilStopped(_ services: [any Service], logger: Logger, drainLimit: Duration = .seconds(10)) async throws {
    let watchdog = StopSignalWatchdog(limit: drainLimit, logger: logger)
    watchdog.start()
    defer { watchdog.servicesEnded() }
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}

/// Watches SIGTERM and SIGINT beside the service group (which acts on the first) to enforce the drain's limit. Signals
/// and the deadline are handled on a dispatch queue of their own, not the concurrency pool, so that the exit comes
/// even when every task is stuck.
final class StopSignalWatchdog: Sendable {
    private let machine: Mutex<StopSignalStateMachine>
    private let queue = DispatchQueue(label: "walship.stop-signals")
    private let sources = Mutex<[DispatchSourceSignalBox]>([])
    private let logger: Logger
    private let exit: @Sendable (Int32) -> Void

    /// `exit` ends the process; the default, `_exit`, runs no atexit handlers or destructors, which could wait on
    /// the very threads that are stuck.
    init(limit: Duration, logger: Logger, exit: @escaping @Sendable (Int32) -> Void = { _exit($0) }) {
        machine = Mutex(StopSignalStateMachine(limit: limit))
        self.logger = logger
        self.exit = exit
    }

    func start() {
        for signal in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: signal, queue: queue)
            source.setEventHandler { [self] in received(signal) }
            source.resume()
            sources.withLock { $0.append(DispatchSourceSignalBox(source)) }
        }
    }

    /// A stop signal arrived (called on the watchdog's queue by its signal sources).
    func received(_ signal: Int32) {
        handle(machine.withLock { $0.signalReceived(signal, now: .now) }, signal)
    }

    func servicesEnded() {
        machine.withLock { $0.servicesEnded() }
    }

    private func handle(_ action: StopSignalStateMachine.Action, _ signal: Int32) {
        switch action {
        case .beginDrain(let deadline):
            logger.notice(
                "stopping on \(signalName(signal)): finishing what is in flight",
                metadata: [
                    "walship.hint":
                        "a second SIGTERM or SIGINT, or \(machine.withLock { $0.limit.components.seconds }) s without the stop finishing, exits at once"
                ])
            checkDeadline(deadline, signal)
        case .exitNow(let status, let reason):
            logger.error("\(reason)", metadata: ["walship.exit_status": "\(status)"])
            exit(status)
        case .none:
            break
        }
    }

    /// Exits once `deadline` has passed during the drain. Dispatch's clock is not `ContinuousClock`: a timer that
    /// fires a hair early is armed again rather than missing the deadline.
    private func checkDeadline(_ deadline: ContinuousClock.Instant, _ signal: Int32) {
        let wait = ContinuousClock.now.duration(to: deadline)
        let nanoseconds = Int(wait.components.seconds) * 1_000_000_000 + Int(wait.components.attoseconds / 1_000_000_000)
        queue.asyncAfter(deadline: .now() + .nanoseconds(max(0, nanoseconds) + 1_000_000)) { [self] in
            let (action, stillDraining) = machine.withLock { machine -> (StopSignalStateMachine.Action, Bool) in
                let action = machine.deadlineReached(now: .now)
                if case .draining = machine.state { return (action, true) }
                return (action, false)
            }
            if stillDraining { checkDeadline(deadline, signal) } else { handle(action, signal) }
        }
    }
}

/// Keeps a dispatch signal source alive for the process's life (the type is not Sendable; it is only stored).
private struct DispatchSourceSignalBox: @unchecked Sendable {
    let source: any DispatchSourceSignal
    init(_ source: any DispatchSourceSignal) { self.source = source }
}
