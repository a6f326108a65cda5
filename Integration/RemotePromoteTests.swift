import Foundation
import Testing

/// `walship promote` with `--standby CONNINFO` and no `--pgdata`: every check and the promotion go through SQL, as
/// for a standby on another host, while the spool, the readiness and the fence stay local to the receiver. The role
/// is no superuser: it may run pg_promote and stream (TIMELINE_HISTORY gives the fence the promoted timeline's
/// history), nothing more; not even clear the synchronous_standby_names the standby inherited.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct RemotePromoteTests {
    @Test func promotesOverSQLAloneAndRefusesWhileThePrimaryIsLinked() throws {
        let fixture = try Fixture("promote-remote")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'walship'"], spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync"])
        try topology.primary.sql(
            """
            CREATE TABLE acknowledged (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
            CREATE ROLE dr_operator LOGIN REPLICATION;
            GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO dr_operator;
            CREATE ROLE dr_reader LOGIN
            """)
        try topology.takeBackup()
        let standby = try topology.startDRStandby(standbyPort: standbyPort)
        let ackedFile = fixture.directory + "/acked.txt"
        let writer = try startAcknowledgedWriter(fixture, primary: topology.primary, table: "acknowledged", file: ackedFile)
        try waitUntil("the writer to commit and the standby to replay", timeout: 60) {
            let replayed = Int((try? standby.sql("SELECT count(*) FROM acknowledged")) ?? "") ?? 0
            return (acknowledgedIDs(ackedFile).count >= 20 && replayed > 0, "\(replayed) replayed")
        }

        let systemDirectory = topology.spool + "/" + topology.systemIdentifier
        let fence = systemDirectory + "/FENCED"
        let operatorConninfo = "host=127.0.0.1 port=\(standby.port) user=dr_operator dbname=postgres"
        func promote(_ conninfo: String, _ extra: [String]) throws -> CommandResult {
            try run(
                IT.walshipBinary, ["promote", "--standby", conninfo, "--spool", topology.spool] + extra, timeout: 200,
                check: false)
        }
        func expectUnchanged(_ context: String) throws {
            #expect(try standby.sql("SELECT pg_is_in_recovery()") == "t", "\(context): the standby must still recover")
            #expect(!FileManager.default.fileExists(atPath: fence), "\(context): no fence may be written")
        }

        // Neither --pgdata nor --standby: a usage error with a hint.
        let neither = try run(IT.walshipBinary, ["promote", "--spool", topology.spool], check: false)
        #expect(neither.status == 64 && neither.error.contains("--standby CONNINFO"), "\(neither.status): \(neither.error)")

        // The primary is up and its sender linked: refused over SQL as through a data directory.
        let linked = try promote(operatorConninfo, ["--report", fixture.logDirectory + "/refused-linked"])
        #expect(linked.status == 1, "\(linked.output)\(linked.error)")
        #expect(linked.error.contains("the old primary may still be alive"), "\(linked.error)")
        #expect(linked.output.contains("the standby runs on this host (it answered on 127.0.0.1)"), "\(linked.output)")
        try expectUnchanged("refused while linked")
        let refusedJSON = try #require(
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: fixture.logDirectory + "/refused-linked.json"))) as? [String: Any])
        #expect(refusedJSON["outcome"] as? String == "refused" && refusedJSON["dataDirectory"] == nil, "\(refusedJSON)")
        let refusedChecks = refusedJSON["checks"] as? [[String: Any]] ?? []
        // primary_conninfo is hidden from this role; restore_command (readable by any role) shows the spool.
        #expect(
            refusedChecks.contains { $0["name"] as? String == "replicates from walship" && $0["passed"] as? Bool == true },
            "\(refusedChecks)")

        // A role that may not run pg_promote is refused before anything else, even with --force.
        let reader = try promote(
            "host=127.0.0.1 port=\(standby.port) user=dr_reader dbname=postgres",
            ["--force", "--report", fixture.logDirectory + "/refused-reader"])
        #expect(reader.status == 1, "\(reader.output)\(reader.error)")
        #expect(
            reader.error.contains("the role dr_reader may not run pg_promote")
                && reader.error.contains("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO dr_reader"),
            "\(reader.error)")
        try expectUnchanged("refused for the role")

        // Disaster: the primary dies with -9 while the writer commits; once the sender says so, promote over SQL.
        kill(try postmasterPID(of: topology.primary), SIGKILL)
        usleep(300_000)
        writer.kill9()
        let lastAcked = try #require(acknowledgedIDs(ackedFile).max())
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)
        let report = fixture.logDirectory + "/promotion"
        let promoted = try promote(operatorConninfo, ["--report", report, "--timeout", "120"])
        #expect(promoted.status == 0, "promote: \(promoted.output)\(promoted.error)")
        topology.sender!.kill9()
        #expect(promoted.output.contains("(every acknowledged commit is present)"), "\(promoted.output)")
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report + ".json"))) as? [String: Any])
        #expect(json["outcome"] as? String == "promoted")
        #expect(json["dataDirectory"] == nil, "a standby reached over SQL has no data directory here")
        #expect((json["standby"] as? String)?.contains("user=dr_operator") == true, "\(json["standby"] ?? "")")
        let rpo = json["rpo"] as? [String: Any]
        #expect(rpo?["bytes"] as? Int == 0, "\(json)")
        #expect((rpo?["seconds"] as? NSNumber)?.doubleValue == 0)
        #expect(json["modeAtLoss"] as? String == "sync", "\(json)")
        #expect(json["everyAcknowledgedCommitPresent"] as? Bool == true, "\(json["loss"] ?? "")")
        let checks = json["checks"] as? [[String: Any]] ?? []
        #expect(
            checks.contains { $0["name"] as? String == "fence records the promoted timeline" && $0["passed"] as? Bool == true },
            "\(checks)")
        // A role that may promote but not ALTER SYSTEM: promoted all the same, and the report says what is left to do.
        let unclearable = checks.filter { $0["passed"] as? Bool != true }
        #expect(unclearable.map { $0["name"] as? String } == ["synchronous_standby_names cleared"], "\(checks)")
        #expect(
            (unclearable.first?["detail"] as? String)?.contains("ALTER SYSTEM SET synchronous_standby_names = ''") == true,
            "\(unclearable)")
        #expect(promoted.output.contains("warning: could not clear synchronous_standby_names"), "\(promoted.output)")
        let markdown = (try? String(contentsOfFile: report + ".md", encoding: .utf8)) ?? ""
        #expect(markdown.contains("Mode at the loss: **sync**") && !markdown.contains("Data directory"), "\(markdown)")

        // The standby left recovery with every acknowledged commit and, once a superuser cleared
        // synchronous_standby_names as the report says, takes writes.
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "f")
        #expect(try standby.sql("SELECT count(*) FROM acknowledged WHERE id <= \(lastAcked)") == "\(lastAcked)")
        try standby.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        try standby.sql("SELECT pg_reload_conf()")
        try standby.sql("INSERT INTO acknowledged (id) VALUES (100000000)")

        // The fence was written at the receiver, with the lineage read over the replication protocol.
        let record = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fence))) as? [String: Any])
        let by = record["by"] as? String ?? ""
        #expect(by.hasPrefix("walship promote --standby ") && by.contains("user=dr_operator"), "\(record)")
        #expect(record["promotedTimeline"] as? Int == 2 && record["parentTimeline"] as? Int == 1, "\(record)")
        let history = try standby.sql("SELECT pg_read_file('pg_wal/00000002.history')")
        #expect(record["timelineHistory"] as? String == history + "\n" || record["timelineHistory"] as? String == history)
        let switchPoint = try #require(record["switchPoint"] as? String)

        // /status and walship status show the fence's lineage.
        let system = (try fetchStatus(port: topology.receiverStatusPort)["systems"] as? [[String: Any]])?.first
        let shown = try #require(system?["fence"] as? [String: Any])
        #expect(
            shown["parentTimeline"] as? Int == 1 && shown["switchPoint"] as? String == switchPoint
                && shown["lineageRecorded"] as? Bool == true && shown["timelineHistory"] == nil, "\(shown)")
        let status = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.receiverStatusPort)"], check: false)
        #expect(
            status.output.contains("FENCED: the DR replica was promoted at")
                && status.output.contains("to timeline 2 (from timeline 1 at \(switchPoint))"), "\(status.output)")
        print("remote promotion: fence from timeline 1 at \(switchPoint); \(promoted.output.suffix(400))")
    }
}
