import Foundation
import Testing
import WALCore

/// A stock PostgreSQL 15 standby streams from the receiver's standby endpoint.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct StandbyTests {
    /// A standby made from a base backup of the primary, streaming from walship, not from the primary.
    func makeStandby(_ fixture: Fixture, _ topology: ShipTopology, standbyPort: Int) throws -> Cluster {
        try fixture.baseBackup(of: topology.primary, name: "standby")
        return try fixture.startCopy(
            name: "standby", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr_replica'",
                "wal_retrieve_retry_interval = '1s'", "hot_standby = on",
            ])
    }

    func waitForReplay(_ standby: Cluster, _ primary: Cluster, _ what: String) throws {
        let target = try lsn(primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the standby to replay \(what)", timeout: 120) {
            let replayed = try standby.sql("SELECT pg_last_wal_replay_lsn()")
            return ((lsn(replayed) ?? 0) >= target, "\(replayed) < \(String(target, radix: 16))")
        }
    }

    @Test func stockStandbyReplaysContinuouslyThroughTheReceiver() throws {
        let fixture = try Fixture("standby-stream")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        let standby = try makeStandby(fixture, topology, standbyPort: standbyPort)

        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        try topology.primary.sql(
            "CREATE TABLE patients (id int PRIMARY KEY, name text); INSERT INTO patients SELECT g, 'p' || g FROM generate_series(1, 5000) g"
        )
        try topology.primary.pgbench(["-T", "3", "-c", "2"])
        try waitForReplay(standby, topology.primary, "pgbench and DDL")
        let checks = [
            "SELECT sum(abalance), count(*) FROM pgbench_accounts", "SELECT sum(bbalance) FROM pgbench_branches",
            "SELECT count(*), sum(delta) FROM pgbench_history", "SELECT count(*), max(name) FROM patients",
        ]
        for q in checks { #expect(try standby.sql(q) == topology.primary.sql(q), "\(q)") }

        // The primary sees the DR replica's replay position.
        try waitUntil("pg_stat_replication.replay_lsn to show the DR replica", timeout: 60) {
            let replay = try topology.primary.sql("SELECT replay_lsn FROM pg_stat_replication WHERE application_name = 'walship'")
            return ((lsn(replay) ?? 0) >= (lsn(try standby.sql("SELECT pg_last_wal_replay_lsn()")) ?? .max), replay)
        }

        // The receiver remembers the standby and shows it.
        try waitUntil("the standby in the receiver's status", timeout: 30) {
            let systems = (try fetchStatus(port: topology.receiverStatusPort))["systems"] as? [[String: Any]]
            let standbys = systems?.first?["standbys"] as? [[String: Any]] ?? []
            return (standbys.contains { $0["name"] as? String == "dr_replica" }, "\(standbys)")
        }

        // A commit reaches the standby quickly: no polling interval in the way.
        try topology.primary.sql("CREATE TABLE marker (at timestamptz)")
        let start = Date()
        try topology.primary.sql("INSERT INTO marker VALUES (now())")
        try waitUntil("the marker row on the standby", timeout: 30) {
            (try standby.sql("SELECT count(*) FROM marker") == "1", "")
        }
        #expect(Date().timeIntervalSince(start) < 5)

        // The standby survives a receiver restart.
        topology.receiver!.kill9()
        try topology.startReceiver()
        try topology.waitUntilStreaming()
        try topology.primary.sql("INSERT INTO patients SELECT g, 'q' || g FROM generate_series(5001, 6000) g")
        try waitForReplay(standby, topology.primary, "after the receiver restarted")
        #expect(try standby.sql("SELECT count(*) FROM patients") == "6000")
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "t")

        // walship standby forget refuses while the standby is connected (the receiver says so on its control
        // socket), and once it is stopped removes the record that pins its WAL.
        let forget = ["standby", "forget", "dr_replica", "--spool", topology.spool]
        var refusal = ""
        try waitUntil("the receiver to report the standby connected", timeout: 30) {
            let r = try run(IT.walshipBinary, forget + ["--dry-run"], check: false)
            refusal = r.error
            return (r.status != 0 && r.error.contains("is connected to the receiver now"), r.output + r.error)
        }
        #expect(refusal.contains("application_name dr_replica"), "\(refusal)")
        let record = topology.spool + "/\(topology.systemIdentifier)/standbys/app-dr_replica.json"
        #expect(FileManager.default.fileExists(atPath: record))
        standby.stopImmediately()
        var dry = ""
        try waitUntil("the receiver to see the standby gone", timeout: 30) {
            let r = try run(IT.walshipBinary, forget + ["--dry-run"], check: false)
            dry = r.output
            return (r.status == 0, r.output + r.error)
        }
        #expect(dry.contains("standby dr_replica (by application_name) replayed up to"), "\(dry)")
        #expect(dry.contains("would remove the record of standby dr_replica"), "\(dry)")
        #expect(FileManager.default.fileExists(atPath: record))
        let forgotten = try run(IT.walshipBinary, forget)
        #expect(forgotten.output.contains("removed the record of standby dr_replica"), "\(forgotten.output)")
        #expect(!FileManager.default.fileExists(atPath: record))
        let unknown = try run(IT.walshipBinary, forget, check: false)
        #expect(unknown.status != 0 && unknown.error.contains("no standby named dr_replica is recorded"), "\(unknown.error)")
    }

    /// The receiver reads the commit time of what the standby replayed from the spool's WAL: it equals the
    /// standby's own `pg_last_xact_replay_timestamp()`, and its WAL decoding agrees with pg_waldump.
    @Test func theLastReplayedCommitTimeIsTheStandbysOwn() throws {
        let fixture = try Fixture("standby-commit-time")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        let standby = try makeStandby(fixture, topology, standbyPort: standbyPort)

        try topology.primary.sql("CREATE TABLE visits (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        let switched = try topology.primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        for id in 1...40 {
            // Every fifth transaction rolls back: an abort record, which the standby's replay time counts too.
            try topology.primary.sql(
                id % 5 == 0 ? "BEGIN; INSERT INTO visits (id) VALUES (\(id)); ROLLBACK" : "INSERT INTO visits (id) VALUES (\(id))"
            )
        }
        try topology.primary.sql("SELECT pg_switch_wal()")
        try topology.primary.sql("INSERT INTO visits (id) VALUES (1000)")
        try waitForReplay(standby, topology.primary, "the visits")

        // What the status says is what the standby says, once the standby's reply has reached the receiver.
        try waitUntil("the receiver's last replayed commit to be the standby's", timeout: 60) {
            let own = try standby.sql(
                "SELECT pg_last_wal_replay_lsn(), extract(epoch FROM pg_last_xact_replay_timestamp())")
            let parts = own.split(separator: "|")
            let system = (try fetchStatus(port: topology.receiverStatusPort))["systems"] as? [[String: Any]]
            let reported = system?.first
            guard parts.count == 2, stageLSN(reported, "replayed") == lsn(String(parts[0])),
                let text = reported?["lastReplayedCommitTime"] as? String, let at = parseISO8601Date(text),
                let standbyTime = Double(parts[1])
            else { return (false, "standby \(own), receiver \(reported ?? [:])") }
            let committedLSN = (reported?["lastReplayedCommitLSN"] as? String).flatMap(lsn) ?? .max
            #expect(committedLSN <= lsn(String(parts[0]))!)
            return (abs(at.timeIntervalSince1970 - standbyTime) < 0.0011, "receiver \(text), standby \(standbyTime)")
        }
        let table = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.receiverStatusPort)"], check: false)
        #expect(table.output.contains("last replayed commit: "), "\(table.output)")

        // The decoder finds the transaction ends pg_waldump lists, with the same times, in the switched segment.
        let compressed = topology.walDirectory + "/" + switched + ".lz4"
        try waitUntil("segment \(switched) to be completed in the spool") {
            (FileManager.default.fileExists(atPath: compressed), "")
        }
        let plain = fixture.directory + "/dump/" + switched
        try FileManager.default.createDirectory(atPath: fixture.directory + "/dump", withIntermediateDirectories: true)
        try run("/usr/bin/lz4", ["-d", "-q", compressed, plain])
        let dump = try run(
            topology.primary.bin + "/pg_waldump", ["-r", "Transaction", plain], environment: ["TZ": "UTC"], check: false)
        let listed = dump.output.split(separator: "\n").compactMap { line -> String? in
            guard let desc = line.range(of: "desc: ") else { return nil }
            let words = line[desc.upperBound...].split(separator: " ")
            guard words.count >= 3, words[0] == "COMMIT" || words[0] == "ABORT" else { return nil }
            return "\(words[0]) \(words[1]) \(words[2])"
        }
        #expect(listed.count >= 40, "pg_waldump: \(dump.output) \(dump.error)")
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: plain)))
        var scanner = TransactionEndScanner(
            fromPage: SegmentName(switched, segmentSize: .default)!.startLSN, segmentSize: .default)
        let found = bytes.withUnsafeBytes { scanner.consume($0) }.map { end in
            "\(end.committed ? "COMMIT" : "ABORT") \(pgTimestampText(end.time))"
        }
        #expect(found == listed)
        #expect(found.filter { $0.hasPrefix("ABORT") }.count >= 8)
    }

    @Test func standbyEndpointAuthenticatesAndAnswersLikeAWalsender() throws {
        let fixture = try Fixture("standby-auth")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        let standbyPort = IT.freePort()
        let passwordFile = fixture.directory + "/standby-password"
        try "correct horse\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-password-file", passwordFile]
        try topology.startReceiver()
        try topology.startSender()
        try topology.switchAndWait()

        func replication(_ password: String, _ command: String) throws -> CommandResult {
            try run(
                "/usr/bin/psql",
                [
                    "-AtX", "-c", command,
                    "host=127.0.0.1 port=\(standbyPort) user=postgres replication=true password='\(password)'",
                ],
                timeout: 30, check: false)
        }
        let wrong = try replication("wrong", "IDENTIFY_SYSTEM")
        #expect(wrong.status != 0)
        #expect(wrong.error.contains("password authentication failed"), "\(wrong.error)")
        let right = try replication("correct horse", "IDENTIFY_SYSTEM")
        #expect(right.status == 0, "\(right.error)")
        #expect(right.output.hasPrefix(topology.systemIdentifier + "|1|"), "\(right.output)")
        #expect(
            try replication("correct horse", "SHOW wal_segment_size").output.trimmingCharacters(in: .whitespacesAndNewlines)
                == "16MB")
        let tooOld = try replication("correct horse", "START_REPLICATION 0/0 TIMELINE 1")
        #expect(tooOld.error.contains("has already been removed"), "\(tooOld.error)")
        let wrongTimeline = try replication("correct horse", "START_REPLICATION 0/1000000 TIMELINE 7")
        #expect(wrongTimeline.error.contains("not in this server's history"), "\(wrongTimeline.error)")
        let notReplication = try run(
            "/usr/bin/psql",
            ["-AtX", "-c", "SELECT 1", "host=127.0.0.1 port=\(standbyPort) user=postgres password='correct horse'"],
            timeout: 30, check: false)
        #expect(notReplication.status != 0)

        // Without a password file or trust, the endpoint refuses to start; trust only on loopback.
        let noAuth = try run(
            IT.walshipBinary,
            [
                "receive", "--listen", "127.0.0.1:1", "--spool", fixture.directory + "/s2", "--insecure",
                "--standby-listen", "127.0.0.1:2",
            ], timeout: 30, check: false)
        #expect(noAuth.status != 0 && noAuth.error.contains("--standby-password-file"), "\(noAuth.error)")
        let remoteTrust = try run(
            IT.walshipBinary,
            [
                "receive", "--listen", "127.0.0.1:1", "--spool", fixture.directory + "/s2", "--insecure",
                "--standby-listen", "0.0.0.0:2", "--standby-trust",
            ], timeout: 30, check: false)
        #expect(remoteTrust.status != 0 && remoteTrust.error.contains("loopback"), "\(remoteTrust.error)")

        // A stored SCRAM verifier, taken from pg_authid, instead of a password on the DR host: a stock
        // standby with the password in its primary_conninfo authenticates with SCRAM-SHA-256 and replays.
        try topology.primary.sql("SET password_encryption = 'scram-sha-256'; CREATE ROLE dr_login LOGIN PASSWORD 'stored-secret'")
        let verifier = try topology.primary.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'dr_login'")
        #expect(verifier.hasPrefix("SCRAM-SHA-256$"))
        let verifierFile = fixture.directory + "/standby-verifier"
        try (verifier + "\n").write(toFile: verifierFile, atomically: true, encoding: .utf8)
        topology.receiver!.stop()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-password-file", verifierFile]
        try topology.startReceiver()
        #expect(try replication("correct horse", "IDENTIFY_SYSTEM").status != 0)
        try fixture.baseBackup(of: topology.primary, name: "scram-standby")
        let standby = try fixture.startCopy(
            name: "scram-standby", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres password=stored-secret application_name=dr_scram'",
                "hot_standby = on", "wal_retrieve_retry_interval = '1s'",
            ])
        try topology.primary.sql("CREATE TABLE scram_check AS SELECT 42 AS answer")
        let target = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the SCRAM-authenticated standby to replay", timeout: 90) {
            let replayed = try standby.sql("SELECT pg_last_wal_replay_lsn()")
            return ((lsn(replayed) ?? 0) >= target, replayed)
        }
        #expect(try standby.sql("SELECT answer FROM scram_check") == "42")
    }

    /// With --standby-tls-cert/--standby-tls-key the endpoint requires TLS: a plaintext standby is refused with a
    /// hint, libpq's verify-full accepts the receiver's certificate, and a stock standby streams over TLS with
    /// SCRAM. The ship link runs over mutual TLS too.
    @Test func standbysMustUseTLSWhenTheEndpointServesIt() throws {
        let fixture = try Fixture("standby-tls")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        let certs = topology.certificates
        let standbyPort = IT.freePort()
        let passwordFile = fixture.directory + "/standby-password"
        try "tls secret\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
        topology.receiverExtra = [
            "--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-password-file", passwordFile,
            "--standby-tls-cert", certs + "/receiver.crt", "--standby-tls-key", certs + "/receiver.key",
        ]
        try topology.startReceiver()
        try topology.startSender()
        try topology.switchAndWait()

        func identify(_ ssl: String) throws -> CommandResult {
            try run(
                "/usr/bin/psql",
                [
                    "-AtX", "-c", "IDENTIFY_SYSTEM",
                    "host=127.0.0.1 port=\(standbyPort) user=postgres replication=true password='tls secret' \(ssl)",
                ],
                timeout: 30, check: false)
        }
        let plaintext = try identify("sslmode=disable")
        #expect(plaintext.status != 0 && plaintext.error.contains("requires TLS"), "\(plaintext.error)")
        let verified = try identify("sslmode=verify-full sslrootcert=\(certs)/ca.crt")
        #expect(
            verified.status == 0 && verified.output.contains(topology.systemIdentifier), "\(verified.output)\(verified.error)")
        let otherCA = fixture.directory + "/other-certs"
        _ = try run(IT.walshipBinary, ["certs", "init", otherCA, "--receiver-name", "127.0.0.1"])
        let wrongCA = try identify("sslmode=verify-full sslrootcert=\(otherCA)/ca.crt")
        #expect(wrongCA.status != 0 && wrongCA.error.contains("certificate verify failed"), "\(wrongCA.error)")

        try fixture.baseBackup(of: topology.primary, name: "tls-standby")
        let standby = try fixture.startCopy(
            name: "tls-standby", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres password=''tls secret'' sslmode=verify-full sslrootcert=\(certs)/ca.crt application_name=dr_tls'",
                "hot_standby = on", "wal_retrieve_retry_interval = '1s'",
            ])
        try topology.primary.sql("CREATE TABLE tls_check AS SELECT 7 AS answer")
        try waitForReplay(standby, topology.primary, "WAL served over TLS")
        #expect(try standby.sql("SELECT answer FROM tls_check") == "7")
        #expect(try standby.sql("SELECT status FROM pg_stat_wal_receiver") == "streaming")
    }
}

/// A PostgreSQL timestamp as pg_waldump prints it with TZ=UTC: `2026-12-07 15:20:01.123456`.
func pgTimestampText(_ time: PostgresTimestamp) -> String {
    let micros = time.unixMicroseconds
    let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
    let date = Date(timeIntervalSince1970: TimeInterval(seconds))
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC")!
    let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
    return String(
        format: "%04d-%02d-%02d %02d:%02d:%02d.%06d", c.year!, c.month!, c.day!, c.hour!, c.minute!, c.second!,
        Int(micros - seconds * 1_000_000))
}

/// ISO 8601 with or without fractional seconds, as status documents write dates.
func parseISO8601Date(_ text: String) -> Date? {
    (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text)) ?? (try? Date.ISO8601FormatStyle().parse(text))
}
