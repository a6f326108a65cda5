import Foundation
import Logging
import ServiceLifecycle
import StatusModel
import Synchronization

/// Completes a process's status with what the monitor knows (active alerts, health, lag history) and
/// checks the alert conditions every `interval`.
public final class StatusMonitor: Service {
    let thresholds: AlertThresholds
    let notifier: AlertNotifier
    let interval: Duration
    let base: @Sendable () -> StatusDocument
    private let machine: Mutex<AlertStateMachine>
    private let histories = Mutex<[String: LagHistory]>([:])

    public init(
        role: String, thresholds: AlertThresholds, notifier: AlertNotifier, recoverAfterSeconds: Double = 30,
        interval: Duration = .seconds(1), base: @escaping @Sendable () -> StatusDocument
    ) {
        self.thresholds = thresholds
        self.notifier = notifier
        self.interval = interval
        self.base = base
        self.machine = Mutex(
            AlertStateMachine(
                role: role, host: ProcessInfo.processInfo.hostName,
                recoverAfterSeconds: recoverAfterSeconds))
    }

    /// The status with alerts, health and history filled in.
    public func current(now: Date = Date()) -> StatusDocument {
        var status = base()
        status.alerts = machine.withLock { $0.active }
        let recorded = histories.withLock { histories in
            for system in status.systems {
                guard let stage = system.lastStage, let bytes = stage.bytesBehind, let seconds = stage.secondsBehind else {
                    continue
                }
                histories[system.systemIdentifier ?? "", default: LagHistory()]
                    .record(.init(at: now, bytes: bytes, seconds: seconds))
            }
            return histories
        }
        for index in status.systems.indices {
            status.systems[index].history = recorded[status.systems[index].systemIdentifier ?? ""]?.points ?? []
        }
        let verdict = HealthCheck.evaluate(status, thresholds: healthThresholds, now: now)
        status.health = .init(status: verdict.code.label.lowercased(), reasons: verdict.reasons)
        return status
    }

    /// The health verdict uses `walship status`'s default lag thresholds; the process's own alert
    /// thresholds already count through its active alerts.
    var healthThresholds: StatusThresholds { StatusThresholds() }

    /// One round: observe, decide, notify. Returns the events sent (for tests and logs).
    @discardableResult
    public func check(now: Date = Date()) async -> [AlertEvent] {
        let status = current(now: now)
        let observations = AlertRules.observe(status, thresholds: thresholds, now: now)
        let events = machine.withLock { $0.evaluate(observations, now: now) }
        for event in events { await notifier.deliver(event) }
        return events
    }

    /// Checks once per interval until a graceful shutdown (or cancellation) of the command's services.
    public func run() async throws {
        while !Task.isShuttingDownGracefully {
            await check()
            do {
                try await cancelWhenGracefulShutdown { [interval] in try await Task.sleep(for: interval) }
            } catch is CancellationError where Task.isShuttingDownGracefully {
                return
            }
        }
    }

    /// Sends a one-off notice (a drill or backup succeeded or failed).
    public static func notice(
        _ kind: AlertEvent.Kind, condition: String, role: String, system: String?, message: String,
        details: [String: String], notifier: AlertNotifier
    ) async {
        let now = Date()
        await notifier.deliver(
            AlertEvent(
                event: kind, condition: condition, severity: kind == .failure ? .critical : .info,
                role: role, host: ProcessInfo.processInfo.hostName, system: system,
                message: message, startedAt: now, at: now, details: details))
    }
}
