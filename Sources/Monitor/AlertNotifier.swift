import ChildProcess
import Foundation
import Logging
import StatusModel

/// Delivers alert events: logs each one, pipes it as JSON to `--alert-command` (run by /bin/sh) and POSTs
/// it to `--alert-webhook`. A failing destination is logged, never fatal: monitoring must not stop
/// shipping.
public final class AlertNotifier: Sendable {
    public let command: String?
    public let webhook: URL?
    let logger: Logger
    let timeout: Duration

    public init(command: String?, webhook: URL?, logger: Logger, timeout: Duration = .seconds(30)) {
        self.command = command
        self.webhook = webhook
        self.logger = logger
        self.timeout = timeout
    }

    public var hasDestination: Bool { command != nil || webhook != nil }

    public func deliver(_ event: AlertEvent) async {
        log(event)
        guard hasDestination, let body = try? StatusDocument.encoder(pretty: false).encode(event) else { return }
        if let command { await run(command, stdin: body, event: event) }
        if let webhook { await post(body, to: webhook, event: event) }
    }

    private func log(_ event: AlertEvent) {
        let metadata: Logger.Metadata = [
            "walship.alert": "\(event.condition)", "walship.event": "\(event.event.rawValue)",
            "walship.severity": "\(event.severity.rawValue)", "walship.system": "\(event.system ?? "-")",
        ]
        let message: Logger.Message = "alert \(event.event.rawValue): \(event.message)"
        switch event.event {
        case .firing: logger.log(level: event.severity == .critical ? .critical : .warning, message, metadata: metadata)
        case .resolved, .success: logger.notice(message, metadata: metadata)
        case .failure: logger.error(message, metadata: metadata)
        }
    }

    private func run(_ command: String, stdin body: Data, event: AlertEvent) async {
        // The event is its standard input, from a file: a command that never reads it cannot block us.
        let child = ChildProcess(
            "/bin/sh", ["-c", command],
            environment: [
                "WALSHIP_ALERT_EVENT": event.event.rawValue, "WALSHIP_ALERT_CONDITION": event.condition,
                "WALSHIP_ALERT_SEVERITY": event.severity.rawValue,
            ], input: .bytes(Array(body)), output: .inherited, errorOutput: .inherited, timeout: timeout)
        do {
            let result = try await child.run()
            if !result.succeeded {
                logger.error(
                    "--alert-command failed",
                    metadata: ["walship.exit_status": "\(result.status)", "walship.alert": "\(event.condition)"])
            }
        } catch  where error.kind == .timedOut(timeout) {
            logger.error(
                "--alert-command did not finish within \(timeout); stopped it", metadata: ["walship.alert": "\(event.condition)"])
        } catch {
            logger.error("cannot run --alert-command", metadata: ["walship.error": "\(error)"])
        }
    }

    private func post(_ body: Data, to url: URL, event: AlertEvent) async {
        do {
            let code = try await HTTPRequest.send(
                .POST, url, body: Array(body), contentType: "application/json",
                timeout: timeout
            ).status
            if !(200..<300).contains(code) {
                logger.error("--alert-webhook answered HTTP \(code)", metadata: ["walship.alert": "\(event.condition)"])
            }
        } catch {
            logger.error(
                "--alert-webhook unreachable", metadata: ["walship.error": "\(error)", "walship.alert": "\(event.condition)"])
        }
    }
}
