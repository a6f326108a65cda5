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
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let input = Pipe()
        process.standardInput = input
        process.environment = ProcessInfo.processInfo.environment.merging([
            "WALSHIP_ALERT_EVENT": event.event.rawValue, "WALSHIP_ALERT_CONDITION": event.condition,
            "WALSHIP_ALERT_SEVERITY": event.severity.rawValue,
        ]) { $1 }
        let exited = AsyncStream<Int32>.makeStream()
        process.terminationHandler = {
            exited.continuation.yield($0.terminationStatus)
            exited.continuation.finish()
        }
        do {
            try process.run()
        } catch {
            logger.error("cannot run --alert-command", metadata: ["walship.error": "\(error)"])
            return
        }
        // Write stdin off the async threads: a command that never reads must not block us.
        let handle = input.fileHandleForWriting
        DispatchQueue.global().async {
            try? handle.write(contentsOf: body)
            try? handle.close()
        }
        let timeout = self.timeout
        let status: Int32? = await withTaskGroup(of: Int32?.self) { group in
            group.addTask {
                for await status in exited.stream { return status }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        if status == nil {
            process.terminate()
            logger.error(
                "--alert-command did not finish within \(timeout); stopped it", metadata: ["walship.alert": "\(event.condition)"])
        } else if status != 0 {
            logger.error(
                "--alert-command failed", metadata: ["walship.exit_status": "\(status!)", "walship.alert": "\(event.condition)"])
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
