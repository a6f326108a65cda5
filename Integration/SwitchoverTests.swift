import Foundation
import Testing

/// A planned switchover between two sites and back, under a synchronous writer that records every acknowledged
/// commit: `walship switchover` at the primary's site, then at the standby's, each way.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct SwitchoverTests {
    /// Site A starts as the primary's site (its receiver idle), site B as the DR site (its sender waiting).
    struct Sites {
        var topology: ShipTopology
        let standbyB: Cluster
        let spoolA: String
        let receiverAStatus: Int
        let endpointA: Int
        let endpointB: Int
        let senderBStatus: Int
        let senderB: Daemon
    }

    func twoSites(_ fixture: Fixture) throws -> Sites {
        var topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'site_a'", "archive_mode": "off"],
            spoolOwnedByPostgres: true)
        // One certificate per site (certs init --site), each serving its site's receiver and sender.
        let siteCertificates = fixture.directory + "/site-certs"
        _ = try run(IT.walshipBinary, ["certs", "init", siteCertificates, "--site", "a=127.0.0.1", "--site", "b=127.0.0.1"])
        if IT.isRoot { _ = try run("/bin/chown", ["-R", "postgres:postgres", siteCertificates]) }
        let site = { (name: String) in
            [
                "--tls-cert", "\(siteCertificates)/\(name).crt", "--tls-key", "\(siteCertificates)/\(name).key", "--tls-ca",
                "\(siteCertificates)/ca.crt",
            ]
        }
        // The topology's receiver is site B's, its sender site A's.
        topology.linkArguments = { role in site(role == "receiver" ? "b" : "a") }
        let endpointB = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(endpointB)", "--standby-trust"]
        // A debug build's receiver takes seconds to complete the segment a clean stop switches away from (archive_mode
        // on); the link must outlast that, or the primary's walsender gives up before the shutdown checkpoint's ack.
        try topology.startReceiver(linkTimeout: 30)
        try topology.startSender(extra: ["--sync", "--application-name", "site_a", "--standby-wait", "--link-timeout", "30"])
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        try topology.takeBackup()
        let standbyB = try topology.startDRStandby(standbyPort: endpointB)

        // Site A's receiver: idle until site B's server is promoted, then the old primary follows through it.
        let spoolA = try fixture.postgresDirectory("spool-a")
        let receiverAPort = IT.freePort()
        let receiverAStatus = IT.freePort()
        let endpointA = IT.freePort()
        _ = try fixture.daemon(
            "receiver-a", "/usr/bin/setpriv",
            ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", IT.walshipBinary]
                + ["receive", "--listen", "127.0.0.1:\(receiverAPort)", "--spool", spoolA] + site("a") + [
                    "--status-listen", "127.0.0.1:\(receiverAStatus)", "--standby-listen", "127.0.0.1:\(endpointA)",
                    "--standby-trust", "--link-timeout", "30",
                ])
        // Site B's sender waits beside the standby until it is promoted.
        let senderBStatus = IT.freePort()
        let senderB = try fixture.walship(
            "sender-b",
            [
                "send", "--source", standbyB.conninfo, "--to", "127.0.0.1:\(receiverAPort)", "--slot", "site_b",
                "--create-slot", "--standby-wait", "--sync", "--application-name", "site_b", "--status-listen",
                "127.0.0.1:\(senderBStatus)", "--link-timeout", "30", "--retry-max-seconds", "2",
            ] + site("b"))
        try waitUntil("site B's sender to wait for its server's promotion", timeout: 30) {
            let state = (try? fetchStatus(port: senderBStatus))?["state"] as? String
            return (state == "waiting for promotion", "state=\(state ?? "nil")\n\(senderB.log.suffix(1500))")
        }
        return Sites(
            topology: topology, standbyB: standbyB, spoolA: spoolA, receiverAStatus: receiverAStatus, endpointA: endpointA,
            endpointB: endpointB, senderBStatus: senderBStatus, senderB: senderB)
    }

    /// Runs one site's half; returns its report.
    func switchover(_ fixture: Fixture, _ name: String, _ arguments: [String]) throws -> [String: Any] {
        let report = fixture.logDirectory + "/" + name
        let result = try run(
            IT.walshipBinary, ["switchover", "--report", report, "--timeout", "60"] + arguments, timeout: 300, check: false)
        print("walship switchover (\(name)):\n\(result.output)")
        try #require(result.status == 0, "\(name): \(result.output)\(result.error)")
        return try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report + ".json"))) as? [String: Any])
    }

    @Test func aPlannedRoundTripLosesNoAcknowledgedCommitAndCopiesNothing() throws {
        let fixture = try Fixture("switchover")
        defer { fixture.tearDown() }
        let sites = try twoSites(fixture)
        let primaryA = sites.topology.primary
        let standbyB = sites.standbyB

        // The writer reaches whichever server takes writes, and records only commits that returned.
        let ackedFile = fixture.directory + "/acked.txt"
        let conninfo =
            "host=127.0.0.1,127.0.0.1 port=\(primaryA.port),\(standbyB.port) user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2"
        let writer = try fixture.daemon(
            "writer", "/bin/bash",
            [
                "-c",
                """
                for i in $(seq 1 10000000); do
                  psql "\(conninfo)" -qAtX -v ON_ERROR_STOP=1 -c "INSERT INTO acknowledged VALUES ($i)" >/dev/null 2>&1 \\
                    && echo "$i" >> \(ackedFile) || sleep 0.05
                done
                """,
            ])
        try waitForMoreCommits(40, in: ackedFile, "the writer to commit on site A", timeout: 60) { "" }

        // A → B: the primary's site first, then the standby's.
        let demotedA = try switchover(
            fixture, "a-to-b-at-a",
            [
                "--pgdata", primaryA.dataDirectory, "--spool", sites.spoolA, "--primary-conninfo",
                "host=127.0.0.1 port=\(sites.endpointA) user=postgres application_name=site_a_standby",
                "--sender-status", "127.0.0.1:\(sites.topology.senderStatusPort)", "--application-name", "site_a", "--slot",
                "walship_it",
            ])
        #expect(demotedA["outcome"] as? String == "demoted", "\(demotedA)")
        let checkpointA = try #require(demotedA["shutdownCheckpointLSN"] as? String)
        let promotedB = try switchover(
            fixture, "a-to-b-at-b",
            [
                "--pgdata", standbyB.dataDirectory, "--spool", sites.topology.spool, "--application-name", "site_b", "--slot",
                "site_b", "--shutdown-checkpoint", checkpointA,
            ])
        #expect(promotedB["outcome"] as? String == "promoted", "\(promotedB)")
        #expect(promotedB["timeline"] as? Int == 2)
        #expect(promotedB["modeAtEnd"] as? String == "sync", "\(promotedB)")
        #expect(promotedB["bytesCopied"] as? Int == 0)
        let outageAB = try #require(promotedB["writeOutageSeconds"] as? Double, "\(promotedB)")
        let promotion = promotedB["promotion"] as? [String: Any]
        #expect(promotion?["kind"] as? String == "switchover")
        #expect(promotion?["everyAcknowledgedCommitPresent"] as? Bool == true, "\(promotion ?? [:])")

        try waitForMoreCommits(40, in: ackedFile, "the writer to commit on site B", timeout: 90) {
            sites.senderB.log.suffix(2000).description
        }
        // The old primary follows the new one through its own site's receiver, with no copy.
        let endB = try #require(lsn(try standbyB.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the old primary to replay site B's writes through site A's receiver", timeout: 120) {
            let replayed = (try? primaryA.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= endB, replayed)
        }

        // B → A: the same two commands the other way round.
        let demotedB = try switchover(
            fixture, "b-to-a-at-b",
            [
                "--pgdata", standbyB.dataDirectory, "--spool", sites.topology.spool, "--primary-conninfo",
                "host=127.0.0.1 port=\(sites.endpointB) user=postgres application_name=dr_replica", "--sender-status",
                "127.0.0.1:\(sites.senderBStatus)", "--application-name", "site_b", "--slot", "site_b",
            ])
        #expect(demotedB["outcome"] as? String == "demoted", "\(demotedB)")
        let checkpointB = try #require(demotedB["shutdownCheckpointLSN"] as? String)
        let promotedA = try switchover(
            fixture, "b-to-a-at-a",
            [
                "--pgdata", primaryA.dataDirectory, "--spool", sites.spoolA, "--application-name", "site_a", "--slot",
                "walship_it", "--shutdown-checkpoint", checkpointB,
            ])
        #expect(promotedA["outcome"] as? String == "promoted", "\(promotedA)")
        #expect(promotedA["timeline"] as? Int == 3)
        #expect(promotedA["modeAtEnd"] as? String == "sync", "\(promotedA)")
        let outageBA = try #require(promotedA["writeOutageSeconds"] as? Double, "\(promotedA)")
        try waitForMoreCommits(40, in: ackedFile, "the writer to commit on site A again", timeout: 90) { "" }

        // Every acknowledged commit is on the original primary, and site B replays to the same data.
        writer.kill9()
        let acknowledged = Set(
            ((try? String(contentsOfFile: ackedFile, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int($0) })
        let present = Set(try primaryA.sql("SELECT id FROM acknowledged").split(separator: "\n").compactMap { Int($0) })
        #expect(acknowledged.subtracting(present).isEmpty, "lost: \(acknowledged.subtracting(present).sorted().prefix(20))")
        let endA = try #require(lsn(try primaryA.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("site B's server to replay site A's writes", timeout: 120) {
            let replayed = (try? standbyB.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= endA, replayed)
        }
        let query = "SELECT count(*), sum(id) FROM acknowledged"
        #expect(try standbyB.sql(query) == primaryA.sql(query))
        #expect(try standbyB.sql("SELECT pg_is_in_recovery()") == "t")
        // No base backup was taken after the first: each site's spool holds the timelines it was fed, no copy.
        let system = sites.topology.systemIdentifier
        for (spool, histories) in [
            (sites.topology.spool, ["00000002.history", "00000003.history"]), (sites.spoolA, ["00000002.history"]),
        ] {
            let names = try FileManager.default.contentsOfDirectory(atPath: spool + "/\(system)/wal")
            for history in histories { #expect(names.contains(history), "\(spool): \(names.sorted())") }
        }
        let backupsA = (try? FileManager.default.contentsOfDirectory(atPath: sites.spoolA + "/\(system)/base")) ?? []
        #expect(backupsA.isEmpty, "\(backupsA)")
        print(
            String(
                format: "switchover round trip: %d commits acknowledged, 0 lost; write outage A→B %.2f s, B→A %.2f s",
                acknowledged.count, outageAB, outageBA))
        #expect(outageAB < 10 && outageBA < 10)
    }

    @Test func theStandbysSiteRefusesWhileThePrimaryRuns() throws {
        let fixture = try Fixture("switchover-refused")
        defer { fixture.tearDown() }
        let sites = try twoSites(fixture)
        let result = try run(
            IT.walshipBinary,
            [
                "switchover", "--pgdata", sites.standbyB.dataDirectory, "--spool", sites.topology.spool, "--application-name",
                "site_b", "--slot", "site_b", "--report", fixture.logDirectory + "/refused",
            ], timeout: 120, check: false)
        #expect(result.status == 1, "\(result.output)\(result.error)")
        #expect(result.output.contains("FAIL  primary stopped"), "\(result.output)")
        #expect(result.error.contains("nothing was changed"), "\(result.error)")
        #expect(try sites.standbyB.sql("SELECT pg_is_in_recovery()") == "t")
        #expect(try sites.standbyB.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'site_b'") == "0")
        // The primary's site, asynchronous and asked for a dry run: refused before anything changes, with the hint.
        try sites.topology.primary.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        try sites.topology.primary.sql("SELECT pg_reload_conf()")
        try waitUntil("the sender to be asynchronous", timeout: 30) {
            let state = try sites.topology.primary.sql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'site_a'")
            return (state == "async", state)
        }
        let dry = try run(
            IT.walshipBinary,
            [
                "switchover", "--pgdata", sites.topology.primary.dataDirectory, "--spool", sites.spoolA, "--primary-conninfo",
                "host=127.0.0.1 port=\(sites.endpointA) user=postgres", "--application-name", "site_a", "--dry-run",
                "--report", fixture.logDirectory + "/dry",
            ], timeout: 120, check: false)
        #expect(dry.status == 1, "\(dry.output)\(dry.error)")
        #expect(dry.output.contains("FAIL  synchronous: sync_state is async"), "\(dry.output)")
        #expect(try sites.topology.primary.sql("SELECT pg_is_in_recovery()") == "f")
    }
}
