import ArgumentParser
import Foundation
import Monitor
import StatusModel
import WALCore
import WalshipConfig

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the lag chain of a running sender or receiver; exit codes follow the Nagios plugin convention.",
        discussion: """
            Reads GET /status from a walship send or walship receive started with --status-listen.
            Exit status: 0 OK, 1 WARNING (lagging), 2 CRITICAL (link down, far behind, or a critical alert), 3 UNKNOWN (status unreadable).
            Examples:
              walship status --url http://127.0.0.1:7001
              walship status --url http://dr.example:7001 --json | jq .systems[0].chain
              walship status --url http://127.0.0.1:7001 --watch
            """)

    @OptionGroup var configFile: ConfigFileOptions

    @Option(help: "Status endpoint of walship send or receive (its --status-listen), e.g. http://127.0.0.1:7001.")
    var url: String

    @Flag(help: "Print the status JSON as served (the exit code still reflects the verdict).")
    var json = false

    @Flag(help: "Refresh in place every --interval until interrupted.")
    var watch = false

    @Option(help: ArgumentHelp("Time between refreshes with --watch: seconds, or 500ms, 10s.", valueName: "duration"))
    var interval = TimeSpan(seconds: 2)

    @Option(help: ArgumentHelp("How long to wait for the endpoint: seconds, or 500ms, 10s.", valueName: "duration"))
    var timeout = TimeSpan(seconds: 5)

    @Option(
        help: ArgumentHelp("WARNING when the DR site is more than this far behind: seconds, or 1m, 2h.", valueName: "duration"))
    var warningLagSeconds = TimeSpan(seconds: 60)
    @Option(help: ArgumentHelp("CRITICAL when more than this far behind: seconds, or 10m, 1h.", valueName: "duration"))
    var criticalLagSeconds = TimeSpan(seconds: 600)
    @Option(
        help: ArgumentHelp("WARNING when more than this much WAL behind: bytes, or 64M, 1G (powers of 1024).", valueName: "size"))
    var warningLagBytes = ByteSize(bytes: 64 << 20)
    @Option(
        help: ArgumentHelp("CRITICAL when more than this much WAL behind: bytes, or 64M, 1G (powers of 1024).", valueName: "size")
    )
    var criticalLagBytes = ByteSize(bytes: 1 << 30)

    func validate() throws {
        guard statusURL != nil else {
            throw ValidationError(
                "--url expects http://HOST:PORT (the --status-listen of walship send or receive), got \"\(url)\"")
        }
        guard interval.seconds >= 0.2 else { throw ValidationError("--interval must be at least 0.2 seconds") }
        guard warningLagSeconds <= criticalLagSeconds, warningLagBytes <= criticalLagBytes else {
            throw ValidationError("warning thresholds must not exceed critical ones")
        }
    }

    var statusURL: URL? { Self.statusURL(url) }

    /// Accepts `http://host:port`, `host:port` and a URL already ending in /status.
    static func statusURL(_ url: String) -> URL? {
        var text = url.contains("://") ? url : "http://" + url
        while text.hasSuffix("/") { text.removeLast() }
        if !text.hasSuffix("/status") { text += "/status" }
        guard let u = URL(string: text), ["http", "https"].contains(u.scheme ?? ""), u.host != nil else { return nil }
        return u
    }

    var thresholds: StatusThresholds {
        StatusThresholds(
            warningLagSeconds: warningLagSeconds.seconds, criticalLagSeconds: criticalLagSeconds.seconds,
            warningLagBytes: warningLagBytes.bytes, criticalLagBytes: criticalLagBytes.bytes)
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "status")
        if !watch {
            let (text, verdict) = await once()
            print(text)
            throw ExitCode(verdict.code.rawValue)
        }
        let terminal = isatty(STDOUT_FILENO) == 1
        var lastCode = HealthCheck.Code.unknown
        while !Task.isCancelled {
            let (text, verdict) = await once()
            lastCode = verdict.code
            // Home and clear-to-end keep the screen steady instead of scrolling.
            print(
                (terminal ? "\u{1B}[H\u{1B}[2J" : "") + text
                    + (terminal ? "\n\n(refreshing every \(interval); Ctrl-C to stop)" : ""))
            fflush(nil)
            try? await Task.sleep(for: interval.duration)
        }
        throw ExitCode(lastCode.rawValue)
    }

    /// One reading: the text to show and the verdict.
    func once() async -> (String, HealthCheck.Verdict) {
        guard let statusURL else { return ("", HealthCheck.unreadable("bad --url")) }
        let data: Data
        do {
            data = try await fetchStatusData(statusURL, timeout: timeout.seconds)
        } catch {
            let verdict = HealthCheck.unreadable(
                "cannot read \(statusURL): \(error) (hint: is walship running with --status-listen at that address?)")
            return (json ? #"{"error": "\#(jsonEscape(verdict.reasons[0]))"}"# : verdict.summary, verdict)
        }
        let document: StatusDocument
        do {
            document = try StatusDocument.decoder().decode(StatusDocument.self, from: data)
        } catch {
            let verdict = HealthCheck.unreadable("\(statusURL) did not return a walship status document: \(error)")
            return (json ? String(decoding: data, as: UTF8.self) : verdict.summary, verdict)
        }
        let verdict = HealthCheck.evaluate(document, thresholds: thresholds, now: Date())
        if json { return (String(decoding: data, as: UTF8.self), verdict) }
        return (StatusTable.render(document, verdict: verdict), verdict)
    }

}

func jsonEscape(_ text: String) -> String {
    let data = (try? JSONEncoder().encode(text)) ?? Data("\"\"".utf8)
    return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
}
