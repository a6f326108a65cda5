import ArgumentParser
import Foundation
import Logging
import Monitor
import PGReplication
import Sender
import ShipTLS
import Spool
import StatusModel
import WALCore
import WalshipConfig

#if canImport(Glibc)
import Glibc
#endif

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration file and test what the configured command needs, one line per check.",
        discussion: """
            The file is read exactly as walship send/receive --config read it (with WALSHIP_* environment overrides). For send: the source is reachable as a replication connection, the slot is present (or will be created), the receiver answers a handshake, the certificates are valid, the clocks of this host, the primary and the receiver agree, and the primary's synchronous_standby_names matches sync. For receive: the spool is writable, the listen addresses are free or held by the running receiver, the certificates and the standby credential are valid. Nothing is left behind, except the empty spool directory of a database system the receiver had not heard of (as its first sender would make it). Exit status 0 when every check passes (warnings allowed), 1 otherwise.
            Example:
              walship check --config /etc/walship/walship.toml
            """)

    @Option(help: ArgumentHelp("The configuration file (default: WALSHIP_CONFIG).", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("The command to check, send or receive (default: the one table the file has).", valueName: "role"))
    var role: String?

    @Option(help: "Clock difference, in seconds, beyond which the clock check warns.")
    var maxClockSkew: Double = 5

    func validate() throws {
        if let role, WalshipConfiguration.schema.roles[role] == nil {
            throw ValidationError("--role must be send or receive, not \"\(role)\"")
        }
        guard maxClockSkew > 0 else { throw ValidationError("--max-clock-skew must be positive") }
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let path = config ?? environment["WALSHIP_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        var report = CheckReport()
        let file: ConfigFile?
        do {
            file = try path.map { try ConfigFile.load(path: $0) }
        } catch {
            report.fail("configuration: \(error)")
            throw ExitCode(1)
        }
        let chosen: String
        if let role {
            chosen = role
        } else if let file, file.roles.count == 1, let only = file.roles.first {
            chosen = only
        } else if let file, file.roles.count > 1 {
            report.fail(
                "configuration: \(file.path) configures \(file.roles.joined(separator: " and ")) (hint: pass --role to say which this host runs)"
            )
            throw ExitCode(1)
        } else {
            report.fail(
                "configuration: nothing says which command to check (hint: pass --config FILE with a [send] or [receive] table, or --role)"
            )
            throw ExitCode(1)
        }
        let expansion: Expansion
        do {
            expansion = try Layering.expand(
                arguments: [], role: chosen, schema: WalshipConfiguration.schema, file: file,
                environment: environment)
        } catch {
            report.fail("configuration: \(error)")
            throw ExitCode(1)
        }
        let source = file.map { "\($0.path)" } ?? "the environment"
        do {
            if chosen == "send" {
                let send = try Send.parse(expansion.arguments)
                report.ok("configuration: \(source) gives walship send \(expansion.origins.count) options")
                await SenderChecks(send: send, maxSkew: maxClockSkew).run(&report)
            } else {
                let receive = try Receive.parse(expansion.arguments)
                report.ok("configuration: \(source) gives walship receive \(expansion.origins.count) options")
                await ReceiverChecks(receive: receive).run(&report)
            }
        } catch {
            let message = expansion.annotate(Send.message(for: error)).trimmingCharacters(in: .whitespacesAndNewlines)
            report.fail("configuration: \(message.replacingOccurrences(of: "\n", with: "; "))")
        }
        if report.failures > 0 { throw ExitCode(1) }
    }
}

/// Prints each check as it completes, pgBackRest style: `ok`, `WARN` or `FAIL`, then what was found.
struct CheckReport {
    private(set) var failures = 0

    mutating func ok(_ text: String) { emit("ok  ", text) }
    mutating func warn(_ text: String) { emit("WARN", text) }
    mutating func fail(_ text: String) {
        failures += 1
        emit("FAIL", text)
    }

    mutating func add(_ finding: TLSFinding) {
        switch finding.level {
        case .ok: ok("certificates: " + finding.text)
        case .warning: warn("certificates: " + finding.text)
        case .failure: fail("certificates: " + finding.text)
        }
    }

    private func emit(_ level: String, _ text: String) {
        // Unbuffered, so each line appears as its check completes, even into a pipe.
        let line = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
        FileHandle.standardOutput.write(Data("\(level)  \(line)\n".utf8))
    }
}

// MARK: - walship send

struct SenderChecks {
    let send: Send
    let maxSkew: Double

    func run(_ report: inout CheckReport) async {
        let logger = Logger(label: "walship.check")
        var tls: ClientTLS?
        var tlsUsable = true
        if let files = send.link.tlsFiles {
            let findings = files.inspect()
            findings.forEach { report.add($0) }
            // Even with a finding (say, a foreign CA) the files may load: then the handshake below shows
            // what the receiver makes of them.
            do {
                tls = ClientTLS(context: try files.clientContext(), serverName: send.tlsServerName)
            } catch {
                tlsUsable = false
                if !findings.contains(where: { $0.level == .failure }) { report.fail("certificates: \(error)") }
            }
        } else {
            report.warn("certificates: none; the link runs in plaintext (insecure = true)")
        }

        var identity: SystemIdentity?
        let conninfo: Conninfo
        do {
            conninfo = try Conninfo(send.source)
        } catch {
            report.fail("source: \(error)")
            return
        }
        let session = ReplicationSession(conninfo: conninfo, logger: logger)
        do {
            let found = try await session.connect(applicationName: "walship check")
            identity = found
            let version = "\(found.serverVersion / 10000).\(found.serverVersion % 10000)"
            if found.serverVersion / 10000 == 15 {
                report.ok(
                    "source: \(conninfo) reachable as a replication connection (PostgreSQL \(version), system \(found.systemIdentifier), timeline \(found.timeline))"
                )
            } else {
                report.fail("source: \(conninfo) runs PostgreSQL \(version); walship supports PostgreSQL 15")
            }
            do {
                if let slot = try await session.readSlot(send.slot) {
                    report.ok(
                        "slot: physical slot \"\(send.slot)\" present (restart_lsn \(slot.restartLSN.map { "\($0)" } ?? "not reserved yet"))"
                    )
                } else if send.createSlot {
                    report.ok("slot: \"\(send.slot)\" does not exist yet; walship send creates it (create-slot = true)")
                } else {
                    report.fail(
                        "slot: \"\(send.slot)\" does not exist on the primary (hint: set create-slot = true, or run SELECT pg_create_physical_replication_slot('\(send.slot)', true);)"
                    )
                }
            } catch {
                report.fail("slot: \(error)")
            }
        } catch {
            report.fail(
                "source: \(conninfo) unreachable: \(error) (hint: check that PostgreSQL runs and is reachable with this conninfo, that the role has REPLICATION, and that pg_hba.conf has a 'replication' line for it)"
            )
        }
        await session.close()

        if identity != nil {
            primarySettings(conninfo, &report)
        }
        if !tlsUsable {
            report.fail("receiver: \(send.to) not tried: the TLS files cannot be loaded (see above)")
        } else if let identity {
            await receiver(identity: identity, tls: tls, &report)
        } else {
            receiverPortOnly(&report)
        }
    }

    /// The primary's clock and synchronous_standby_names through an ordinary SQL connection (a physical
    /// replication connection runs no SQL). Such a connection needs a database and a pg_hba line; without them
    /// neither is checked.
    func primarySettings(_ conninfo: Conninfo, _ report: inout CheckReport) {
        var sql = conninfo
        if sql["dbname"] == nil { sql["dbname"] = "postgres" }
        do {
            let connection = try PGConnection(sql, replication: false, applicationName: "walship check")
            let before = Date().timeIntervalSince1970
            let rows = try connection.query(
                "SELECT extract(epoch FROM clock_timestamp())::text, current_setting('synchronous_standby_names')")
            let after = Date().timeIntervalSince1970
            if let text = rows.first?.first ?? nil, let primary = Double(text) {
                clockLine("the primary", offset: primary - (before + after) / 2, &report)
            } else {
                report.warn("clock: the primary returned no time")
            }
            if let row = rows.first, row.count > 1, let names = row[1] { synchronousLine(names, &report) }
        } catch {
            report.warn(
                "clock: skew to the primary not measured: no SQL connection (\(error)) (hint: the check needs a database the role may connect to: add dbname=… to source, or a pg_hba.conf line for it)"
            )
        }
    }

    /// Whether the primary's commits will wait for this sender, against what `sync` says they should do.
    func synchronousLine(_ names: String, _ report: inout CheckReport) {
        let named = SynchronousStandbyNames.includes(names, name: send.applicationName)
        let shown = names.isEmpty ? "empty" : "'\(names)'"
        switch (send.sync, named) {
        case (true, true):
            report.ok(
                "synchronous: synchronous_standby_names (\(shown)) names \"\(send.applicationName)\": commits wait until their WAL is fsynced at the DR site"
            )
        case (true, false):
            report.warn(
                "synchronous: sync = true, but synchronous_standby_names (\(shown)) does not name \"\(send.applicationName)\": commits will not wait for the DR site (hint: once walship send streams, ALTER SYSTEM SET synchronous_standby_names = '\(send.applicationName)'; SELECT pg_reload_conf(); — set it before, and commits wait for a standby that is not there yet)"
            )
        case (false, true):
            report.warn(
                "synchronous: synchronous_standby_names (\(shown)) names \"\(send.applicationName)\", but sync = false: commits wait for the DR site, while the receiver batches fsyncs as for an asynchronous sender (hint: set sync = true)"
            )
        case (false, false):
            report.ok(
                "synchronous: asynchronous shipping; synchronous_standby_names (\(shown)) does not name \"\(send.applicationName)\""
            )
        }
    }

    func receiver(identity: SystemIdentity, tls: ClientTLS?, _ report: inout CheckReport) async {
        guard let endpoint = Monitor.parseHostPort(send.to) else { return }
        do {
            let probe = try await probeReceiver(
                host: endpoint.host, port: endpoint.port, tls: tls, systemIdentifier: identity.systemIdentifier,
                timeline: identity.timeline, walSegmentSize: UInt32(identity.segmentSize.bytes),
                senderName: send.applicationName, timeout: .seconds(min(send.link.linkTimeout, 15)))
            let resume =
                probe.resumeLSN.isValid
                ? "resumes at \(probe.resumeLSN) on timeline \(probe.resumeTimeline)" : "holds no WAL of this system yet"
            report.ok(
                "receiver: \(send.to) answered the handshake\(tls == nil ? " (plaintext)" : " over mutual TLS") (receiver \(probe.receiverName); its spool \(resume))"
            )
            if let offset = probe.clockOffset {
                clockLine("the receiver", offset: offset, &report, roundTrip: probe.roundTripSeconds)
            }
        } catch let error as ReceiverProbeError {
            let hint: String
            switch error.stage {
            case .connect: hint = " (hint: is walship receive running there, and does a firewall let this host reach the port?)"
            case .tls:
                hint =
                    " (hint: tls-ca must be the CA that signed the receiver's certificate, which must name the host in to (or set tls-server-name), and the receiver must trust the CA of tls-cert)"
            case .refused, .handshake: hint = ""
            }
            report.fail("receiver: \(send.to): \(error)\(hint)")
        } catch {
            report.fail("receiver: \(send.to): \(error)")
        }
    }

    /// Without the source's system identifier no hello can be sent: only the port is tried.
    func receiverPortOnly(_ report: inout CheckReport) {
        guard let endpoint = Monitor.parseHostPort(send.to) else { return }
        if let error = NetworkProbe.connect(host: endpoint.host, port: endpoint.port, timeout: 10) {
            report.fail("receiver: \(send.to) unreachable: \(error)")
        } else {
            report.warn(
                "receiver: \(send.to) accepts connections; the handshake was not tried without the source's system identifier")
        }
    }

    func clockLine(_ peer: String, offset: Double, _ report: inout CheckReport, roundTrip: Double? = nil) {
        let ms = Int((offset * 1000).rounded())
        let precision = roundTrip.map { String(format: " ±%.0f ms", $0 * 500) } ?? ""
        let text = "clock: \(peer) is \(abs(ms)) ms \(ms >= 0 ? "ahead of" : "behind") this host\(precision)"
        if abs(offset) > maxSkew {
            report.warn(text + " (hint: lag and alert times assume synchronized clocks; run NTP/chrony on both hosts)")
        } else {
            report.ok(text)
        }
    }
}

// MARK: - walship receive

struct ReceiverChecks {
    let receive: Receive

    func run(_ report: inout CheckReport) async {
        if let files = receive.link.tlsFiles {
            let findings = files.inspect()
            findings.forEach { report.add($0) }
            if !findings.contains(where: { $0.level == .failure }) {
                do { _ = try files.serverContext() } catch { report.fail("certificates: \(error)") }
            }
        } else {
            report.warn("certificates: none; the link runs in plaintext (insecure = true)")
        }
        spool(&report)
        let running = await runningReceiver()
        listen("listen", receive.listen, running: running, &report)
        if let standbyListen = receive.standbyListen { listen("standby-listen", standbyListen, running: running, &report) }
        if let statusListen = receive.link.statusListen { listen("status-listen", statusListen, running: running, &report) }
        standbyCredential(&report)
    }

    func spool(_ report: inout CheckReport) {
        let root = receive.spool.hasPrefix("/") ? receive.spool : FileManager.default.currentDirectoryPath + "/" + receive.spool
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory) else {
            // walship receive creates the spool; it can when the nearest existing parent is writable.
            var parent = (root as NSString).deletingLastPathComponent
            while !FileManager.default.fileExists(atPath: parent), parent != "/" {
                parent = (parent as NSString).deletingLastPathComponent
            }
            if access(parent, W_OK) == 0 {
                report.ok("spool: \(root) does not exist yet; walship receive creates it (in \(parent), writable)")
            } else {
                report.fail(
                    "spool: \(root) does not exist and \(parent) is not writable for this user (hint: install -d -o postgres -g postgres -m 0750 \(root))"
                )
            }
            return
        }
        guard isDirectory.boolValue else {
            report.fail("spool: \(root) is not a directory")
            return
        }
        // A probe file, written, fsynced and removed: what the receiver does with every segment.
        let probe = root + "/.walship-check-\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            report.fail(
                "spool: \(root) is not writable for this user: \(String(cString: strerror(errno))) (hint: the receiver runs as the postgres OS user: chown -R postgres:postgres \(root))"
            )
            return
        }
        let bytes = [UInt8](repeating: 0, count: 8192)
        let written = write(fd, bytes, bytes.count)
        let synced = fsync(fd)
        let error = errno
        close(fd)
        unlink(probe)
        let directory = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
        guard written == bytes.count, synced == 0 else {
            report.fail("spool: writing to \(root) failed: \(String(cString: strerror(error)))")
            return
        }
        var free = ""
        var stats = statvfs()
        if statvfs(root, &stats) == 0, stats.f_blocks > 0 {
            free = String(format: ", %.0f%% free", Double(stats.f_bavail) / Double(stats.f_blocks) * 100)
        }
        let systems = (try? Spool.systemIdentifiers(root: root)) ?? []
        report.ok(
            "spool: \(root) is writable and fsyncs (\(systems.isEmpty ? "no system yet" : "systems \(systems.map(String.init).joined(separator: ", "))")\(free))"
        )
    }

    /// The status document of a receiver already serving this configuration, when its status endpoint answers.
    func runningReceiver() async -> StatusDocument? {
        guard let statusListen = receive.link.statusListen, let endpoint = Monitor.parseHostPort(statusListen) else { return nil }
        let host = ["0.0.0.0", "::"].contains(endpoint.host) ? "127.0.0.1" : endpoint.host
        guard let url = URL(string: "http://\(host.contains(":") ? "[\(host)]" : host):\(endpoint.port)/status"),
            let data = try? await fetchStatusData(url, timeout: 5),
            let document = try? StatusDocument.decoder().decode(StatusDocument.self, from: data),
            document.role == "receiver"
        else { return nil }
        return document
    }

    func listen(_ option: String, _ address: String, running: StatusDocument?, _ report: inout CheckReport) {
        guard let endpoint = Monitor.parseHostPort(address) else { return }
        switch NetworkProbe.bind(host: endpoint.host, port: endpoint.port) {
        case nil:
            report.ok("\(option): \(address) is free to bind")
        case EADDRINUSE?:
            if let running {
                let pid = " (pid \(running.process.pid))"
                report.ok(
                    "\(option): \(address) is in use by the running walship receive\(pid), whose status endpoint answers at \(receive.link.statusListen ?? "")"
                )
            } else {
                report.fail(
                    "\(option): \(address) is in use, and no walship receive answers at status-listen to claim it (hint: ss -ltnp 'sport = :\(endpoint.port)' shows which program holds it)"
                )
            }
        case let code?:
            report.fail(
                "\(option): cannot bind \(address): \(String(cString: strerror(code)))\(code == EADDRNOTAVAIL ? " (hint: the address is not one of this host's)" : code == EACCES ? " (hint: ports below 1024 need privileges)" : "")"
            )
        }
    }

    func standbyCredential(_ report: inout CheckReport) {
        guard receive.standbyListen != nil else { return }
        if receive.standbyTrust {
            report.ok("standby credential: none (standby-trust on a loopback standby-listen)")
            return
        }
        guard let file = receive.standbyPasswordFile else { return }
        do {
            _ = try receive.standbyAuthentication()
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            let kind =
                text.hasPrefix("SCRAM-SHA-256$")
                ? "a SCRAM-SHA-256 verifier" : "a password (a SCRAM-SHA-256 verifier keeps the password off this host)"
            report.ok("standby credential: \(file) holds \(kind)")
            if let mode = (try? FileManager.default.attributesOfItem(atPath: file))?[.posixPermissions] as? Int, mode & 0o007 != 0
            {
                report.warn(
                    "standby credential: \(file) is readable by every user (mode \(String(mode, radix: 8))) (hint: chmod 0600 \(file))"
                )
            }
        } catch {
            report.fail("standby credential: \(error)")
        }
    }
}

// MARK: - Sockets

/// Plain socket probes for the checks: nothing here holds a socket past its call.
enum NetworkProbe {
    static func addresses(host: String, port: Int, passive: Bool) -> [addrinfo] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var result: [addrinfo] = []
        var cursor = list
        while let entry = cursor {
            var copy = entry.pointee
            // The address is copied out: freeaddrinfo releases the list.
            let address = UnsafeMutablePointer<sockaddr>.allocate(
                capacity: Int(copy.ai_addrlen) / MemoryLayout<sockaddr>.size + 1)
            memcpy(address, copy.ai_addr, Int(copy.ai_addrlen))
            copy.ai_addr = address
            copy.ai_next = nil
            result.append(copy)
            cursor = entry.pointee.ai_next
        }
        return result
    }

    /// nil when `host:port` can be bound (and is released at once), else the errno.
    static func bind(host: String, port: Int) -> Int32? {
        guard let address = addresses(host: host, port: port, passive: true).first else { return EADDRNOTAVAIL }
        defer { address.ai_addr.deallocate() }
        let fd = socket(address.ai_family, address.ai_socktype, 0)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        return Glibc.bind(fd, address.ai_addr, address.ai_addrlen) == 0 ? nil : errno
    }

    /// nil when a TCP connection to `host:port` opens (and is closed at once), else why not.
    static func connect(host: String, port: Int, timeout: Int) -> String? {
        let candidates = addresses(host: host, port: port, passive: false)
        defer { candidates.forEach { $0.ai_addr.deallocate() } }
        guard !candidates.isEmpty else { return "cannot resolve \(host)" }
        var last = "no address"
        for address in candidates {
            let fd = socket(address.ai_family, address.ai_socktype, 0)
            guard fd >= 0 else { continue }
            var limit = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            let rc = Glibc.connect(fd, address.ai_addr, address.ai_addrlen)
            last = String(cString: strerror(errno))
            close(fd)
            if rc == 0 { return nil }
        }
        return last
    }
}
