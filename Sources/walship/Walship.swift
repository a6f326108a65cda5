import ArgumentParser
import Foundation
import Logging

@main
struct Walship: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walship",
        abstract: "Keep a PostgreSQL disaster-recovery site current to the last commit.",
        discussion: """
            The sender runs beside the primary and streams WAL through a replication slot to the receiver at the
            DR site, which stores it durably in a spool. See docs/runbook.md.
            """,
        version: "0.1.0",
        subcommands: [Send.self, Receive.self, RestoreWAL.self])
}

/// Options every long-running command shares.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func bootstrap(label: String) -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { name in
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Prints one clear line for a failure and exits non-zero, instead of a stack of wrapped errors.
func fail(_ command: String, _ error: any Error) -> ExitCode {
    FileHandle.standardError.write(Data("walship \(command): error: \(error)\n".utf8))
    return ExitCode(1)
}

/// Runs a command's main service, and the status endpoint beside it when `--status-listen` is given;
/// the first to fail ends both, reported as one clear line.
func runService(_ command: String, statusListen: String?, logger: Logger, status: @escaping @Sendable () -> any Encodable & Sendable,
                _ service: @escaping @Sendable () async throws -> Void) async throws {
    do {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service() }
            if let statusListen {
                let endpoint = try parseEndpoint(statusListen, option: "--status-listen")
                group.addTask { try await StatusServer(host: endpoint.host, port: endpoint.port, logger: logger, status: status).run() }
            }
            try await group.next()
            group.cancelAll()
        }
    } catch {
        throw fail(command, error)
    }
}

func parseEndpoint(_ text: String, option: String) throws -> (host: String, port: Int) {
    guard let endpoint = Monitor.parseHostPort(text) else {
        throw ValidationError("\(option) expects HOST:PORT (for example 127.0.0.1:5433), got \"\(text)\"")
    }
    return endpoint
}

import Monitor
