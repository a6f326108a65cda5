import ArgumentParser
import Foundation
import Logging
import Monitor
import Receiver

struct Receive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive WAL at the DR site and store it durably in the spool.",
        discussion: """
            Accepts links from senders (one streaming link per source system), validates every WAL page, stores
            completed segments as DIR/<system-identifier>/wal/NAME.lz4 and acknowledges only what is fsynced.
            Example:
              walship receive --listen 0.0.0.0:7000 --spool /var/lib/walship --insecure
            """)

    @Option(help: "Address to accept senders on, HOST:PORT.")
    var listen: String

    @Option(help: "Spool directory (created if missing; one walship receive per spool).")
    var spool: String

    @Flag(help: "Accept plaintext links (no TLS). Required on both ends for plaintext; use only on a trusted network.")
    var insecure = false

    @Option(help: "Serve status on HOST:PORT (GET /status). Read-only; bind to loopback unless you need it remote.")
    var statusListen: String?

    @Option(help: "Seconds of silence after which a sender's link is considered dead and may be replaced.")
    var linkTimeout = 30

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try parseEndpoint(listen, option: "--listen")
        if let statusListen { _ = try parseEndpoint(statusListen, option: "--status-listen") }
        guard insecure else {
            throw ValidationError("TLS for the ship link is not available in this release; pass --insecure on both ends to receive plaintext over a network you trust")
        }
        guard (5...3600).contains(linkTimeout) else { throw ValidationError("--link-timeout must be 5...3600 seconds") }
    }

    func run() async throws {
        let logger = logging.bootstrap(label: "walship.receive")
        let endpoint = try parseEndpoint(listen, option: "--listen")
        let root = spool.hasPrefix("/") ? spool : FileManager.default.currentDirectoryPath + "/" + spool
        logger.warning("ship link runs without TLS (--insecure): WAL crosses the network in plaintext")
        var configuration = ReceiverConfiguration(listenHost: endpoint.host, listenPort: endpoint.port, spoolRoot: root,
                                                  name: ProcessInfo.processInfo.hostName)
        configuration.linkTimeout = .seconds(linkTimeout)
        let receiver: Receiver
        do { receiver = try Receiver(configuration: configuration, logger: logger) } catch { throw fail("receive", error) }
        try await runService("receive", statusListen: statusListen, logger: logger, status: { receiver.status }) {
            try await receiver.run()
        }
    }
}
