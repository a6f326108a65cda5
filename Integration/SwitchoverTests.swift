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
        /// With `control`: each receiver's --control-listen, each site's configuration file (its [switchover] table)
        /// and its certificate options.
        var controlA = 0
        var controlB = 0
        var configA = ""
        var configB = ""
        var certificates: (String) -> [String] = { _ in [] }
    }

    func twoSites(_ fixture: Fixture, control: Bool = false) throws -> Sites {
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
        let spoolA = try fixture.postgresDirectory("spool-a")
        let endpointA = IT.freePort()
        let senderBStatus = IT.freePort()
        // Each site's configuration file says where its server is; each receiver takes switchover requests from the
        // other site's certificate only.
        let (controlA, controlB) = (IT.freePort(), IT.freePort())
        let (configA, configB) = (fixture.directory + "/site-a.toml", fixture.directory + "/site-b.toml")
        if control {
            let tables = [
                (
                    configA, topology.primary.dataDirectory, spoolA,
                    "host=127.0.0.1 port=\(endpointA) user=postgres application_name=site_a_standby",
                    topology.senderStatusPort, "site_a", "walship_it"
                ),
                (
                    configB, fixture.directory + "/dr", topology.spool,
                    "host=127.0.0.1 port=\(endpointB) user=postgres application_name=dr_replica", senderBStatus, "site_b",
                    "site_b"
                ),
            ]
            for (path, pgdata, spool, conninfo, status, name, slot) in tables {
                let text = """
                    [switchover]
                    pgdata = "\(pgdata)"
                    spool = "\(spool)"
                    primary-conninfo = "\(conninfo)"
                    sender-status = "127.0.0.1:\(status)"
                    application-name = "\(name)"
                    slot = "\(slot)"
                    timeout = "60s"

                    """
                try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            }
            topology.receiverExtra += [
                "--control-listen", "127.0.0.1:\(controlB)", "--control-allow", "a", "--config", configB,
            ]
        }
        // A debug build's receiver takes seconds to complete the segment a clean stop switches away from (archive_mode
        // on); the link must outlast that, or the primary's walsender gives up before the shutdown checkpoint's ack.
        try topology.startReceiver(linkTimeout: 30)
        // Each site's sender reads WAL of timelines its server has left from its site's spool (--site-spool).
        try topology.startSender(extra: [
            "--sync", "--application-name", "site_a", "--standby-wait", "--link-timeout", "30", "--site-spool", spoolA,
        ])
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        try topology.takeBackup()
        let standbyB = try topology.startDRStandby(standbyPort: endpointB)

        // Site A's receiver: idle until site B's server is promoted, then the old primary follows through it.
        let receiverAPort = IT.freePort()
        let receiverAStatus = IT.freePort()
        _ = try fixture.daemon(
            "receiver-a", "/usr/bin/setpriv",
            ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", IT.walshipBinary]
                + ["receive", "--listen", "127.0.0.1:\(receiverAPort)", "--spool", spoolA] + site("a") + [
                    "--status-listen", "127.0.0.1:\(receiverAStatus)", "--standby-listen", "127.0.0.1:\(endpointA)",
                    "--standby-trust", "--link-timeout", "30",
                ]
                + (control ? ["--control-listen", "127.0.0.1:\(controlA)", "--control-allow", "b", "--config", configA] : []))
        // Site B's sender waits beside the standby until it is promoted.
        let senderB = try fixture.walship(
            "sender-b",
            [
                "send", "--source", standbyB.conninfo, "--to", "127.0.0.1:\(receiverAPort)", "--slot", "site_b",
                "--create-slot", "--standby-wait", "--sync", "--application-name", "site_b", "--status-listen",
                "127.0.0.1:\(senderBStatus)", "--link-timeout", "30", "--retry-max-seconds", "2", "--site-spool",
                topology.spool,
            ] + site("b"))
        try waitUntil("site B's sender to wait for its server's promotion", timeout: 30) {
            let state = (try? fetchStatus(port: senderBStatus))?["state"] as? String
            return (state == "waiting for promotion", "state=\(state ?? "nil")\n\(senderB.log.suffix(1500))")
        }
        return Sites(
            topology: topology, standbyB: standbyB, spoolA: spoolA, receiverAStatus: receiverAStatus, endpointA: endpointA,
            endpointB: endpointB, senderBStatus: senderBStatus, senderB: senderB, controlA: controlA, controlB: controlB,
            configA: configA, configB: configB, certificates: site)
    }

    /// Writes every id it commits to `file`, through a multi-host conninfo that reaches whichever server takes writes.
    func startWriter(_ fixture: Fixture, _ sites: Sites, file: String) throws -> Daemon {
        let conninfo =
            "host=127.0.0.1,127.0.0.1 port=\(sites.topology.primary.port),\(sites.standbyB.port) user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2"
        return try fixture.daemon(
            "writer", "/bin/bash",
            [
                "-c",
                """
                for i in $(seq 1 10000000); do
                  psql "\(conninfo)" -qAtX -v ON_ERROR_STOP=1 -c "INSERT INTO acknowledged VALUES ($i)" >/dev/null 2>&1 \\
                    && echo "$i" >> \(file) || sleep 0.05
                done
                """,
            ])
    }

    /// The ids the writer saw committed that `cluster` lacks.
    func lostCommits(_ file: String, _ cluster: Cluster) throws -> (acknowledged: Int, lost: [Int]) {
        let acknowledged = Set(
            ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int($0) })
        let present = Set(try cluster.sql("SELECT id FROM acknowledged").split(separator: "\n").compactMap { Int($0) })
        return (acknowledged.count, acknowledged.subtracting(present).sorted())
    }

    /// The audit log lines of `path` whose event is `event`.
    func auditEvents(_ path: String, _ event: String) -> [[String: Any]] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }.filter { $0["event"] as? String == event }
    }

    /// `walship switchover` run once at site A does both halves, A → B and then B → A: the peer's half through its
    /// receiver's control endpoint, which takes requests only from the one certificate it names and writes each
    /// to its audit log.
    @Test func oneCommandAtOneSiteSwitchesOverAndBack() throws {
        let fixture = try Fixture("switchover-one-command")
        defer { fixture.tearDown() }
        let sites = try twoSites(fixture, control: true)
        let primaryA = sites.topology.primary
        let standbyB = sites.standbyB
        let ackedFile = fixture.directory + "/acked.txt"
        let writer = try startWriter(fixture, sites, file: ackedFile)
        try waitForMoreCommits(30, in: ackedFile, "the writer to commit on site A", timeout: 60) { "" }
        func oneCommand(_ name: String, certificate: String = "a") throws -> CommandResult {
            let result = try run(
                IT.walshipBinary,
                [
                    "switchover", "--config", sites.configA, "--report", fixture.logDirectory + "/" + name,
                    "--peer-control", "127.0.0.1:\(sites.controlB)",
                ] + sites.certificates(certificate), timeout: 400, check: false)
            print("walship switchover (\(name)):\n\(result.output)\(result.error)")
            return result
        }
        func peerReport(_ result: CommandResult) throws -> [String: Any] {
            let path = try #require(
                result.output.split(separator: "\n").last { $0.hasPrefix("peer report: ") }?.dropFirst("peer report: ".count))
            return try #require(
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: String(path)))) as? [String: Any])
        }
        let auditB = sites.topology.spool + "/\(sites.topology.systemIdentifier)/audit.log"
        let auditA = sites.spoolA + "/\(sites.topology.systemIdentifier)/audit.log"

        // Site B allows only site A's certificate: site B's own is refused, nothing changes, the refusal is audited.
        let refused = try oneCommand("refused", certificate: "b")
        #expect(refused.status == 1 && refused.error.contains("may not request a switchover here"), "\(refused.error)")
        #expect(try primaryA.sql("SELECT pg_is_in_recovery()") == "f")
        let refusals = auditEvents(sites.topology.spool + "/audit.log", "switchover-request")
        #expect(refusals.count == 1 && refusals.first?["certificate"] as? String == "b", "\(refusals)")

        // A → B, run at A: A's half here, B's through its control endpoint.
        let there = try oneCommand("a-to-b")
        try #require(there.status == 0, "\(there.output)\(there.error)")
        #expect(there.output.contains("peer: ") && there.output.contains("switchover complete"), "\(there.output)")
        let demotedA = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture.logDirectory + "/a-to-b.json")))
                as? [String: Any])
        #expect(demotedA["outcome"] as? String == "demoted", "\(demotedA)")
        let promotedB = try peerReport(there)
        #expect(promotedB["outcome"] as? String == "promoted" && promotedB["timeline"] as? Int == 2, "\(promotedB)")
        #expect(promotedB["shutdownCheckpointLSN"] as? String == demotedA["shutdownCheckpointLSN"] as? String)
        #expect(promotedB["modeAtEnd"] as? String == "sync" && promotedB["bytesCopied"] as? Int == 0, "\(promotedB)")
        try waitForMoreCommits(30, in: ackedFile, "the writer to commit on site B", timeout: 90) {
            sites.senderB.log.suffix(2000).description
        }

        // B → A, run at A again: now the standby's site, it asks B to demote first, then promotes here.
        let endB = try #require(lsn(try standbyB.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the old primary to replay site B's writes through site A's receiver", timeout: 120) {
            let replayed = (try? primaryA.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= endB, replayed)
        }
        let back = try oneCommand("b-to-a")
        try #require(back.status == 0, "\(back.output)\(back.error)")
        let demotedB = try peerReport(back)
        let steps = (demotedB["steps"] as? [[String: Any]] ?? []).map { "\($0["name"] ?? "?") \($0["seconds"] ?? "?") s" }
        print("site B's demotion through its control endpoint: \(steps.joined(separator: ", "))")
        #expect(demotedB["outcome"] as? String == "demoted", "\(demotedB)")
        let promotedA = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture.logDirectory + "/b-to-a.json")))
                as? [String: Any])
        #expect(promotedA["outcome"] as? String == "promoted" && promotedA["timeline"] as? Int == 3, "\(promotedA)")
        #expect(promotedA["modeAtEnd"] as? String == "sync", "\(promotedA)")
        try waitForMoreCommits(30, in: ackedFile, "the writer to commit on site A again", timeout: 90) { "" }
        writer.kill9()
        let (acknowledged, lost) = try lostCommits(ackedFile, primaryA)
        #expect(lost.isEmpty, "lost: \(lost.prefix(20))")

        // Each request and its answer are in both sites' audit logs.
        let requestsAtB = auditEvents(auditB, "switchover-request").compactMap { $0["action"] as? String }
        #expect(requestsAtB == ["promote", "demote"], "\(requestsAtB)")
        let resultsAtB = auditEvents(auditB, "switchover-result").compactMap { $0["outcome"] as? String }
        #expect(resultsAtB == ["promoted", "demoted"], "\(resultsAtB)")
        let sentFromA = auditEvents(auditA, "switchover-peer-result").compactMap { $0["outcome"] as? String }
        #expect(sentFromA.suffix(1) == ["demoted"], "\(sentFromA)")
        print(
            String(
                format:
                    "one-command switchover there and back: %d commits acknowledged, 0 lost; write outage A→B %.2f s, B→A %.2f s",
                acknowledged, promotedB["writeOutageSeconds"] as? Double ?? -1, promotedA["writeOutageSeconds"] as? Double ?? -1))
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

        // Meanwhile the old primary's restartpoints recycle the start of timeline 2 in its pg_wal: switching back, its
        // sender must ship timeline 2 to site B from site A's spool, which holds all of it.
        try standbyB.sql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
        for _ in 0..<2 {
            try standbyB.sql("INSERT INTO filler SELECT g FROM generate_series(1, 1000) g")
            try standbyB.sql("SELECT pg_switch_wal()")
        }
        try standbyB.sql("CHECKPOINT")
        let checkpointedB = try #require(lsn(try standbyB.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the old primary to replay site B's checkpoint", timeout: 120) {
            let replayed = (try? primaryA.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= checkpointedB, replayed)
        }
        try primaryA.sql("CHECKPOINT")
        let forkLSN = try #require(lsn(checkpointA))
        let forkSegment = String(format: "00000002%08X%08X", UInt32(forkLSN >> 32), UInt32((forkLSN & 0xFFFF_FFFF) >> 24))
        try waitUntil("site A's restartpoint to recycle \(forkSegment)", timeout: 60) {
            let names = try primaryA.sql("SELECT name FROM pg_ls_waldir() ORDER BY name")
            return (!names.contains(forkSegment), names)
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
        // The aim is under 10 s each way (1.4-3.3 s on a quiet host); the bound leaves room for the shutdown
        // checkpoint's fsyncs on a disk the other suites load (15.7 s once under make test), not for a hang.
        #expect(outageAB < 30 && outageBA < 30)
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
