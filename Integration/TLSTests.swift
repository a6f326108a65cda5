import Foundation
import Testing

/// Mutual TLS on the ship link with certificates from `walship certs init`: the good pair streams; a
/// foreign CA, an expired certificate, a wrong name and a plaintext sender are refused with clear errors;
/// `--allow-source` binds a certificate to one system.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct TLSTests {
    func certs(_ fixture: Fixture, _ name: String, receiverName: String = "127.0.0.1", _ extra: [String] = []) throws -> String {
        let directory = fixture.directory + "/" + name
        _ = try run(
            IT.walshipBinary, ["certs", "init", directory, "--receiver-name", receiverName, "--sender-name", "pg-main"] + extra)
        return directory
    }

    /// Certificates close to their end raise certificate_expiry at both ends; walship certs renew issues new ones
    /// from the same CA, and each end changes over on its own restart while the other still has the old pair.
    @Test func certificatesAreRenewedOneEndAtATime() throws {
        let fixture = try Fixture("tls-renew")
        defer { fixture.tearDown() }
        let issued = try certs(fixture, "issued", ["--days", "10"])
        // The DR site's copy: ca.crt, receiver.crt and receiver.key, as the runbook has them copied.
        let drSite = fixture.directory + "/dr-site"
        try FileManager.default.createDirectory(atPath: drSite, withIntermediateDirectories: true)
        func copyToDRSite() throws {
            for name in ["ca.crt", "receiver.crt", "receiver.key"] {
                try? FileManager.default.removeItem(atPath: drSite + "/" + name)
                try FileManager.default.copyItem(atPath: issued + "/" + name, toPath: drSite + "/" + name)
            }
        }
        try copyToDRSite()
        var topology = try ShipTopology(fixture)
        topology.linkArguments = { tlsArguments($0 == "receiver" ? drSite : issued, $0) }
        try topology.startReceiver()
        try topology.startSender()

        func expiryAlert(_ port: Int) throws -> [String: Any]? {
            let alerts = try fetchStatus(port: port)["alerts"] as? [[String: Any]] ?? []
            return alerts.first { $0["condition"] as? String == "certificate_expiry" }
        }
        for (end, port) in [("sender", topology.senderStatusPort), ("receiver", topology.receiverStatusPort)] {
            try waitUntil("the \(end) to warn of its certificate's end", timeout: 30) {
                let alert = try expiryAlert(port)
                return (alert?["severity"] as? String == "warning", "\(alert ?? [:])")
            }
            let certificates = try fetchStatus(port: port)["certificates"] as? [[String: Any]] ?? []
            #expect(Set(certificates.compactMap { $0["use"] as? String }) == ["link", "link CA"], "\(certificates)")
        }

        let renewed = try run(IT.walshipBinary, ["certs", "renew", issued])
        #expect(renewed.output.contains("the replaced files are in \(issued)/replaced-"), "\(renewed.output)")
        func shipped(_ what: String) throws {
            try topology.primary.sql("CREATE TABLE IF NOT EXISTS renewal (step text); INSERT INTO renewal VALUES ('\(what)')")
            let target = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
            try waitUntil("WAL after \(what) to be durable", timeout: 60) {
                let durable = try topology.durable()
                return (durable >= target, String(durable, radix: 16))
            }
        }
        // The sender changes over first: its new certificate against the receiver's old one, one CA behind both.
        topology.sender?.stop()
        try topology.startSender()
        try shipped("the sender renewed")
        #expect(try expiryAlert(topology.senderStatusPort) == nil)
        // Then the DR site.
        try copyToDRSite()
        topology.receiver?.stop()
        try topology.startReceiver()
        try topology.waitUntilStreaming()
        try shipped("the receiver renewed")
        #expect(try expiryAlert(topology.receiverStatusPort) == nil)
    }

    @Test func mutualTLSAdmitsOnlyTheRightPeer() throws {
        let fixture = try Fixture("tls")
        defer { fixture.tearDown() }
        let good = try certs(fixture, "good")
        let foreign = try certs(fixture, "foreign")
        let expired = try certs(fixture, "expired", ["--days", "1", "--backdate-days", "10"])
        let named = try certs(fixture, "named", receiverName: "dr.hospital.example")
        var topology = try ShipTopology(fixture)
        topology.linkArguments = { tlsArguments(good, $0) }
        topology.receiverExtra = ["--allow-source", "pg-main=\(topology.systemIdentifier)"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        let target = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("WAL over TLS to be durable", timeout: 60) { (try topology.durable() >= target, "") }
        #expect(topology.receiver!.log.contains("walship.certificate=pg-main"))

        let base = ["send", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)", "--create-slot"]
        let wrongCA = try run(
            IT.walshipBinary, base + ["--slot", "foreign"] + tlsArguments(foreign, "sender"), timeout: 60, check: false)
        #expect(wrongCA.status == 78 && wrongCA.error.contains("CERTIFICATE_VERIFY_FAILED"), "\(wrongCA.error)")
        let plaintext = try run(IT.walshipBinary, base + ["--slot", "plain", "--insecure"], timeout: 60, check: false)
        #expect(plaintext.status == 78 && plaintext.error.contains("requires TLS"), "\(plaintext.error)")
        let both = try run(
            IT.walshipBinary, base + ["--slot", "both", "--insecure"] + tlsArguments(good, "sender"), timeout: 30, check: false)
        #expect(both.status != 0 && both.error.contains("exclude each other"), "\(both.error)")
        #expect(topology.receiver!.log.contains("TLS handshake with a sender failed"))

        // An expired pair is refused even though the CA matches.
        let expiredPort = IT.freePort()
        _ = try fixture.walship(
            "receiver-expired",
            ["receive", "--listen", "127.0.0.1:\(expiredPort)", "--spool", fixture.directory + "/spool-expired"]
                + tlsArguments(expired, "receiver"))
        let stale = try run(
            IT.walshipBinary,
            [
                "send", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(expiredPort)",
                "--create-slot", "--slot", "stale",
            ] + tlsArguments(expired, "sender"), timeout: 60, check: false)
        #expect(stale.status == 78 && stale.error.contains("CERTIFICATE_VERIFY_FAILED"), "\(stale.error)")

        // A receiver certificate naming another host than the one the sender expects is refused.
        let namedPort = IT.freePort()
        _ = try fixture.walship(
            "receiver-named",
            ["receive", "--listen", "127.0.0.1:\(namedPort)", "--spool", fixture.directory + "/spool-named"]
                + tlsArguments(named, "receiver"))
        let wrongName = try run(
            IT.walshipBinary,
            [
                "send", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(namedPort)", "--create-slot",
                "--slot", "misnamed", "--tls-server-name", "dr.elsewhere.example",
            ] + tlsArguments(named, "sender"),
            timeout: 60, check: false)
        #expect(wrongName.status == 78 && wrongName.error.contains("TLS with the receiver"), "\(wrongName.error)")

        // The right certificate for the wrong system: refused, naming both.
        let other = try fixture.cluster("other")
        try other.start()
        let otherSystem = try other.sql("SELECT system_identifier FROM pg_control_system()")
        let impostor = try fixture.walship(
            "sender-other",
            [
                "send", "--source", other.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)",
                "--create-slot", "--slot", "other", "--retry-max-seconds", "2",
            ] + tlsArguments(good, "sender"))
        try waitUntil("the receiver to refuse the other system", timeout: 60) {
            (
                topology.receiver!.log.contains(
                    "may ship system \(topology.systemIdentifier) only, but it offered system \(otherSystem)"),
                impostor.log.suffix(500).description
            )
        }
        #expect(!FileManager.default.fileExists(atPath: topology.spool + "/" + otherSystem))
        // Slots this test created on the primary would hold WAL: drop them.
        try topology.primary.sql(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name <> 'walship_it' AND NOT active")
    }
}
