import Foundation
import Testing

/// How the primary treats the DR link, as the spool records it: a sender with --sync reads
/// pg_stat_replication.sync_state, every change lands in the receiver's audit log with its LSN and time,
/// status shows it, and --sync not honoured raises one critical alert and one recovery.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct ReplicationModeTests {
    func alertEvents(_ path: String, _ condition: String, _ kind: String) -> Int {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["condition"] as? String == condition && $0["event"] as? String == kind }.count
    }

    func senderMode(_ topology: ShipTopology) -> [String: Any]? {
        ((try? fetchStatus(port: topology.senderStatusPort))?["sender"] as? [String: Any])?["mode"] as? [String: Any]
    }

    func receiverMode(_ topology: ShipTopology) -> [String: Any]? {
        (((try? fetchStatus(port: topology.receiverStatusPort))?["systems"] as? [[String: Any]])?.first)?["mode"]
            as? [String: Any]
    }

    /// The audit log's entries as JSON objects, oldest first.
    func auditLog(_ topology: ShipTopology) -> [[String: Any]] {
        let path = topology.spool + "/" + topology.systemIdentifier + "/audit.log"
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    @Test func syncNotHonouredIsRecordedAlertedAndRecovered() throws {
        let fixture = try Fixture("mode-history")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_standby_names": "'walship'"])
        let alerts = fixture.directory + "/alerts.jsonl"
        try topology.startReceiver()
        try topology.startSender(extra: [
            "--sync", "--alert-sync-grace-seconds", "2", "--alert-recovery-seconds", "2",
            "--alert-command", "cat >> \(alerts); echo >> \(alerts)",
        ])
        try waitUntil("both ends to report mode sync", timeout: 60) {
            let (sender, receiver) = (senderMode(topology), receiverMode(topology))
            return (
                sender?["mode"] as? String == "sync" && receiver?["mode"] as? String == "sync",
                "\(sender ?? [:]) \(receiver ?? [:])"
            )
        }
        #expect(
            try run(IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.senderStatusPort)"], check: false).status
                == 0)

        // As after a failover at the primary site to a node without synchronous_standby_names.
        try topology.primary.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        try topology.primary.sql("SELECT pg_reload_conf()")
        try waitUntil("the sync_not_honoured alert", timeout: 60) {
            (alertEvents(alerts, "sync_not_honoured", "firing") == 1, "\(senderMode(topology) ?? [:])")
        }
        let degraded = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.senderStatusPort)"], check: false)
        #expect(degraded.status >= 1, "\(degraded.output)")
        #expect(degraded.output.contains("NOT HONOURED"), "\(degraded.output)")
        try waitUntil("the receiver to show the mode the sender reported", timeout: 30) {
            let mode = receiverMode(topology)
            return (mode?["mode"] as? String == "async" && mode?["notHonouredSince"] != nil, "\(mode ?? [:])")
        }
        let receiverStatus = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.receiverStatusPort)"], check: false)
        #expect(receiverStatus.status >= 1, "\(receiverStatus.output)")
        // Commits go on without waiting meanwhile: that is what the alarm is about.
        try topology.primary.sql("CREATE TABLE t AS SELECT 1 AS x")

        try topology.primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'walship'")
        try topology.primary.sql("SELECT pg_reload_conf()")
        try waitUntil("the recovery notice", timeout: 60) {
            (alertEvents(alerts, "sync_not_honoured", "resolved") == 1, "\(senderMode(topology) ?? [:])")
        }
        #expect(alertEvents(alerts, "sync_not_honoured", "firing") == 1, "one alert for one incident")
        try waitUntil("the receiver to show sync again", timeout: 30) {
            (receiverMode(topology)?["mode"] as? String == "sync", "\(receiverMode(topology) ?? [:])")
        }

        // The audit log: the link (what the sender promised), then sync, async, sync with rising LSNs.
        let entries = auditLog(topology)
        let link = try #require(entries.first { $0["event"] as? String == "link" }, "\(entries)")
        #expect(link["synchronousRequested"] as? Bool == true && link["receiverLoss"] as? String == "block", "\(link)")
        #expect(link["protocolVersion"] as? Int == 2)
        let modes = entries.filter { $0["event"] as? String == "mode" }
        #expect(modes.map { $0["mode"] as? String ?? "?" } == ["sync", "async", "sync"], "\(entries)")
        let positions = modes.compactMap { ($0["lsn"] as? String).flatMap(lsn) }
        #expect(positions.count == 3 && positions == positions.sorted(), "\(modes)")
        #expect((modes[1]["detail"] as? String ?? "").contains("does not name walship"), "\(modes[1])")

        // A sender of ship protocol version 1 (before mode reports) is still welcomed, in its own version, and its
        // link is recorded with the mode unknown.
        topology.sender!.stop()
        let oldSender = try run(
            "/usr/bin/python3",
            [
                "-c", Self.versionOneSender, "\(topology.receiverPort)", topology.systemIdentifier, topology.certificates,
            ])
        #expect(oldSender.output.contains("welcome version 1"), "\(oldSender.output) \(oldSender.error)")
        try waitUntil("the version 1 link in the audit log", timeout: 30) {
            let last = auditLog(topology).last { $0["event"] as? String == "link" }
            return (last?["protocolVersion"] as? Int == 1 && last?["mode"] as? String == "unknown", "\(last ?? [:])")
        }
        try waitUntil("the receiver to show mode unknown", timeout: 30) {
            (receiverMode(topology)?["mode"] as? String == "unknown", "\(receiverMode(topology) ?? [:])")
        }

        // A restarted receiver shows the mode from its spool before any sender returns.
        topology.receiver!.stop()
        try topology.startReceiver()
        #expect(receiverMode(topology)?["mode"] as? String == "unknown", "\(receiverMode(topology) ?? [:])")
    }

    /// A hello as a version 1 sender wrote it (no receiver-loss rule), over TLS with the test certificates; prints
    /// the welcome's version. Arguments: the receiver's port, the system identifier, the certificates' directory.
    static let versionOneSender = #"""
        import socket, ssl, struct, sys
        def crc32c(data):
            crc = 0xFFFFFFFF
            for byte in data:
                crc ^= byte
                for _ in range(8):
                    crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
            return crc ^ 0xFFFFFFFF
        def frame(kind, payload):
            head = struct.pack(">HBBI", 0x5753, kind, 0, len(payload)) + payload
            return head + struct.pack(">I", crc32c(head))
        name = b"walship-v1"
        hello = struct.pack(">HBBQII", 1, 1, 1, int(sys.argv[2]), 1, 16 << 20) + struct.pack(">H", len(name)) + name
        certificates = sys.argv[3]
        context = ssl.create_default_context(cafile=certificates + "/ca.crt")
        context.load_cert_chain(certificates + "/sender.crt", certificates + "/sender.key")
        context.check_hostname = False
        with context.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])))) as link:
            link.sendall(frame(1, hello))
            head = b""
            while len(head) < 8:
                head += link.recv(8 - len(head))
            magic, kind, flags, length = struct.unpack(">HBBI", head)
            body = b""
            while len(body) < length + 4:
                body += link.recv(length + 4 - len(body))
            print("kind", kind, "welcome version", struct.unpack(">H", body[:2])[0])
        """#
}
