import Foundation
import Testing

/// Disaster and rehearsal: a drill on a throwaway copy leaves the DR standby replaying; then the primary is
/// killed in synchronous mode and `walship promote` brings up the DR replica with every acknowledged
/// commit, reports RPO 0 and RTO, and fences the old primary.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct PromoteTests {
    @Test func drillThenPromoteAfterThePrimaryDies() throws {
        let fixture = try Fixture("promote")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'walship'"],
            spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        let notices = fixture.directory + "/notices.jsonl"
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        // The link runs with mutual TLS (the topology's default), as it would between two sites.
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync"])
        try topology.primary.sql(
            """
            CREATE TABLE patients (id int PRIMARY KEY, name text);
            CREATE TABLE acknowledged (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
            INSERT INTO patients SELECT g, 'patient ' || g FROM generate_series(1, 500) g
            """)
        try topology.takeBackup()
        let standby = try topology.startDRStandby(standbyPort: standbyPort)

        // A steady writer that records each id only after its commit returned (synchronous: offsite fsynced).
        let ackedFile = fixture.directory + "/acked.txt"
        let writer = try startAcknowledgedWriter(fixture, primary: topology.primary, table: "acknowledged", file: ackedFile)
        try waitUntil("the writer to commit", timeout: 60) {
            let n = acknowledgedIDs(ackedFile).count
            return (n >= 20, "\(n) commits")
        }

        // The drill: a throwaway copy recovers from the spool alone and is promoted; the spool gains no
        // history file, the real DR standby keeps replaying.
        let historiesBefore = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory).filter {
            $0.hasSuffix(".history")
        }
        let drillReport = fixture.logDirectory + "/drill-report"
        let drill = try fixture.walship(
            "drill",
            [
                "drill", "--spool", topology.spool, "--check-sql", "SELECT count(*) FROM patients",
                "--report", drillReport, "--timeout", "120",
                "--alert-command", "cat >> \(notices); echo >> \(notices)",
            ])
        try waitUntil("the drill to finish", timeout: 240) { (!drill.isRunning, drill.log.suffix(1500).description) }
        #expect(drill.exitStatus == 0, "drill: \(drill.log)")
        let drillJSON = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: drillReport + ".json")))
                as? [String: Any])
        #expect(drillJSON["outcome"] as? String == "promoted")
        let checks = drillJSON["checks"] as? [[String: Any]] ?? []
        #expect(!checks.isEmpty && checks.allSatisfy { $0["passed"] as? Bool == true }, "\(checks)")
        #expect(((drillJSON["drill"] as? [String: Any])?["checkResult"] as? [[String]])?.first == ["500"])
        #expect((drillJSON["rtoSeconds"] as? NSNumber) != nil)
        #expect(FileManager.default.fileExists(atPath: drillReport + ".md"))
        let historiesAfter = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory).filter {
            $0.hasSuffix(".history")
        }
        #expect(historiesAfter == historiesBefore, "the drill must not add history files to the spool")
        #expect(((try? String(contentsOfFile: notices, encoding: .utf8)) ?? "").contains(#""event":"success""#))
        let replayedBefore = try lsn(standby.sql("SELECT pg_last_wal_replay_lsn()"))!
        try waitUntil("the DR standby to keep replaying after the drill", timeout: 60) {
            let now = try lsn(standby.sql("SELECT pg_last_wal_replay_lsn()")) ?? 0
            let inRecovery = try standby.sql("SELECT pg_is_in_recovery()")
            return (now > replayedBefore && inRecovery == "t", "\(now)")
        }

        // Disaster: the primary dies with -9 in the middle of the writer's stream.
        let postmaster = try String(contentsOfFile: topology.primary.dataDirectory + "/postmaster.pid", encoding: .utf8)
            .split(separator: "\n").first.flatMap { Int32($0) }
        kill(try #require(postmaster), SIGKILL)
        usleep(300_000)
        writer.kill9()
        let acked = acknowledgedIDs(ackedFile)
        let lastAcked = try #require(acked.max())
        // The sender, still running, finds the primary gone and says so; only then may the DR replica be promoted.
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)

        let report = fixture.logDirectory + "/promote-report"
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool,
                "--report", report, "--timeout", "120",
            ], timeout: 200, check: false)
        #expect(promote.status == 0, "promote: \(promote.output)\(promote.error)")
        #expect(promote.output.contains("RPO"), "\(promote.output)")
        topology.sender!.kill9()
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report + ".json"))) as? [String: Any])
        #expect(json["outcome"] as? String == "promoted")
        let rpo = json["rpo"] as? [String: Any]
        #expect(rpo?["bytes"] as? Int == 0, "\(json)")
        #expect((rpo?["seconds"] as? NSNumber)?.doubleValue == 0)
        #expect(json["unacknowledgedTail"] != nil)
        // Synchronous with the block rule since the link began: the report may say every acknowledged commit is present.
        #expect(json["modeAtLoss"] as? String == "sync", "\(json)")
        #expect(json["everyAcknowledgedCommitPresent"] as? Bool == true, "\(json["loss"] ?? "")")
        #expect((json["modeHistory"] as? [[String: Any]])?.last?["mode"] as? String == "sync")
        #expect(promote.output.contains("(every acknowledged commit is present)"), "\(promote.output)")
        let markdown = (try? String(contentsOfFile: report + ".md", encoding: .utf8)) ?? ""
        #expect(markdown.contains("Mode at the loss: **sync**") && markdown.contains("## Next steps"), "\(markdown)")
        #expect(((json["rtoSeconds"] as? NSNumber)?.doubleValue ?? 99) < 60)
        #expect((json["promotedTimeline"] as? Int ?? 0) >= 2)

        // Every acknowledged commit is on the promoted replica, which accepts writes.
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "f")
        #expect(try standby.sql("SELECT count(*) FROM acknowledged WHERE id <= \(lastAcked)") == "\(lastAcked)")
        try standby.sql("INSERT INTO patients VALUES (100000, 'after the disaster')")

        // Fencing: the old primary comes back with its sender; the receiver refuses its WAL and says why.
        let fence = topology.spool + "/" + topology.systemIdentifier + "/FENCED"
        #expect(FileManager.default.fileExists(atPath: fence))
        // Its orphaned backends exit once they notice the postmaster died; until then it cannot start.
        try waitUntil("the old primary to start again", timeout: 60) {
            do {
                try topology.primary.start()
                return (true, "")
            } catch { return (false, "\(error)") }
        }
        topology.sender = try fixture.walship("sender-old-primary", topology.senderArguments)
        try waitUntil("the receiver to refuse the old primary", timeout: 60) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let system = (status["systems"] as? [[String: Any]])?.first
            let alerts = (status["alerts"] as? [[String: Any]] ?? []).compactMap { $0["condition"] as? String }
            return (
                system?["fence"] != nil && alerts.contains("fenced_primary_refused")
                    && topology.sender!.log.contains("promoted at the DR site"),
                "\(alerts); sender: \(topology.sender!.log.suffix(400))"
            )
        }
        #expect(topology.receiver!.log.contains("refused"))

        // Promoting again is refused clearly.
        let again = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool,
                "--report", fixture.logDirectory + "/again",
            ], check: false)
        #expect(again.status == 1)
        #expect(again.error.contains("already promoted"), "\(again.error)")

        // A base backup of the old primary is refused as well: nothing of it may land in the fenced spool.
        let oldBackup = try run(
            IT.walshipBinary,
            [
                "backup", "--source", topology.primary.conninfo,
                "--to", "127.0.0.1:\(topology.receiverPort)",
            ] + topology.linkArguments("sender"),
            timeout: 60, check: false)
        #expect(
            oldBackup.status != 0
                && oldBackup.error.contains("refused the backup: system \(topology.systemIdentifier) was promoted at the DR site")
                && oldBackup.error.contains("a base backup from the old primary"), "\(oldBackup.error)\(oldBackup.output)")
        let stored = try FileManager.default.contentsOfDirectory(
            atPath: topology.spool + "/" + topology.systemIdentifier + "/base")
        #expect(stored.count == 1, "only the backup taken before the promotion is stored: \(stored)")
    }

    /// A drill that fails after its copy's server started (a check query that errors) stops that server, keeps its
    /// log beside the report and says where: no postmaster of the drill survives.
    /// The operator's commands work as the `postgres` OS user, as the units and a DBA run them, not only as root:
    /// restore builds a standby's directory, drill rehearses, promote promotes, with the spool owned by postgres.
    @Test(.enabled(if: IT.isRoot, "needs root to act as the postgres OS user"))
    func restoreDrillAndPromoteRunAsPostgres() throws {
        let fixture = try Fixture("promote-as-postgres")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.sql(
            "CREATE TABLE patients (id int PRIMARY KEY); INSERT INTO patients SELECT generate_series(1, 300)")
        try topology.takeBackup()

        // restore, as postgres, into a directory postgres owns: no chown needed, none attempted.
        let restored = fixture.directory + "/restored"
        let restore = try run(
            IT.walshipBinary,
            [
                "restore", "--spool", topology.spool, "--pgdata", restored, "--standby", "--primary-conninfo",
                "host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr_replica",
            ], asPostgres: true, check: false)
        #expect(restore.status == 0, "\(restore.output)\(restore.error)")
        var owner = stat()
        #expect(stat(restored + "/PG_VERSION", &owner) == 0 && owner.st_uid == getpwnam("postgres").pointee.pw_uid)
        let standby = try fixture.startCopy(
            name: "restored", signal: "standby.signal", settings: ["hot_standby = on", "wal_retrieve_retry_interval = '1s'"])
        try waitUntil("the restored standby to replay", timeout: 60) {
            let count = (try? standby.sql("SELECT count(*) FROM patients")) ?? ""
            return (count == "300", count)
        }

        // drill, as postgres, in a work directory postgres owns.
        let drill = try run(
            IT.walshipBinary,
            [
                "drill", "--spool", topology.spool, "--workdir", fixture.directory + "/drill", "--check-sql",
                "SELECT count(*) FROM patients", "--report", fixture.directory + "/drill-report", "--timeout", "120",
            ], asPostgres: true, timeout: 240, check: false)
        #expect(drill.status == 0, "\(drill.output)\(drill.error)")

        // promote, as postgres, once the primary is lost.
        kill(try postmasterPID(of: topology.primary), SIGKILL)
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool, "--report",
                fixture.directory + "/promotion", "--timeout", "60",
            ], asPostgres: true, timeout: 150, check: false)
        #expect(promote.status == 0, "\(promote.output)\(promote.error)")
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "f")
        #expect(FileManager.default.fileExists(atPath: topology.spool + "/\(topology.systemIdentifier)/FENCED"))
    }

    @Test func aFailedDrillLeavesNoServerAndKeepsItsLog() throws {
        let fixture = try Fixture("drill-fails")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.sql("CREATE TABLE patients (id int PRIMARY KEY)")
        try topology.takeBackup()
        let workDirectory = fixture.directory + "/drill-copy"
        let report = fixture.logDirectory + "/failed-drill"
        let drill = try run(
            IT.walshipBinary,
            [
                "drill", "--spool", topology.spool, "--check-sql", "SELECT * FROM no_such_table", "--report", report,
                "--workdir", workDirectory, "--timeout", "120",
            ], timeout: 240, check: false)
        #expect(drill.status == 1, "\(drill.output)\(drill.error)")
        let serverLog = report + ".server.log"
        #expect(drill.output.contains(serverLog) || drill.error.contains(serverLog), "\(drill.output)\(drill.error)")
        let log = (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? ""
        #expect(log.contains("no_such_table"), "the copy's server log is kept: \(log.suffix(500))")
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report + ".json"))) as? [String: Any])
        #expect((json["drill"] as? [String: Any])?["serverLog"] as? String == serverLog)
        // No process runs from the copy's directory any more.
        let survivors = try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap { Int32($0) }.filter { pid in
            let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            return String(decoding: cmdline, as: UTF8.self).contains(workDirectory)
        }
        #expect(survivors.isEmpty, "drill processes still running: \(survivors)")
        #expect(!FileManager.default.fileExists(atPath: workDirectory + "/pgdata/postmaster.pid"))
    }

    /// The reproduced overstatement: an asynchronous link, the sender frozen while the primary commits 200 rows,
    /// the primary killed, the DR standby promoted. The rows are missing, and the report must not say every
    /// acknowledged commit is present: it gives the mode at the loss and says what after the last contact is unknown.
    @Test func anAsynchronousLossIsNeverReportedAsComplete() throws {
        let fixture = try Fixture("promote-async")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.sql("CREATE TABLE rows (id int PRIMARY KEY); INSERT INTO rows SELECT generate_series(1, 100)")
        try topology.takeBackup()
        let standby = try topology.startDRStandby(standbyPort: standbyPort)
        try waitUntil("the receiver to record the asynchronous mode", timeout: 60) {
            let system = ((try? fetchStatus(port: topology.receiverStatusPort))?["systems"] as? [[String: Any]])?.first
            let mode = system?["mode"] as? [String: Any]
            return (mode?["mode"] as? String == "async", "\(mode ?? [:])")
        }
        try waitUntil("the standby to replay the first 100 rows", timeout: 60) {
            let n = (try? standby.sql("SELECT count(*) FROM rows")) ?? "?"
            return (n == "100", n)
        }

        // The sender freezes; the primary goes on committing (nothing waits for the DR site), then dies.
        topology.sender!.signal(SIGSTOP)
        try topology.primary.sql("INSERT INTO rows SELECT generate_series(101, 300)")
        let postmaster = try String(contentsOfFile: topology.primary.dataDirectory + "/postmaster.pid", encoding: .utf8)
            .split(separator: "\n").first.flatMap { Int32($0) }
        kill(try #require(postmaster), SIGKILL)
        topology.sender!.kill9()

        let report = fixture.logDirectory + "/promote-async"
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool, "--report", report,
                "--timeout", "60", "--force",
            ], timeout: 200, check: false)
        #expect(promote.status == 0, "promote: \(promote.output)\(promote.error)")
        #expect(try standby.sql("SELECT count(*) FROM rows") == "100", "the 200 rows committed while frozen are missing")
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report + ".json"))) as? [String: Any])
        #expect(json["modeAtLoss"] as? String == "async", "\(json)")
        #expect(json["everyAcknowledgedCommitPresent"] as? Bool == false)
        let loss = json["loss"] as? String ?? ""
        #expect(loss.contains("may be missing") && loss.contains("after that is unknown"), "\(loss)")
        #expect(!promote.output.contains("every acknowledged commit is present"), "\(promote.output)")
        #expect(promote.output.contains("mode at the loss:         async"), "\(promote.output)")
        let markdown = (try? String(contentsOfFile: report + ".md", encoding: .utf8)) ?? ""
        #expect(
            !markdown.lowercased().contains("every acknowledged commit is present")
                && markdown.contains("Mode at the loss: **async**"))
    }
}
