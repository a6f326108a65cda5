import Foundation
import Testing

/// The fence after a promotion lets through exactly the promoted replica's lineage: a sender beside the new primary
/// (the promoted DR replica, timeline 2) ships into the same spool without `--force`, while the old primary
/// (timeline 1) stays refused.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct FenceLineageTests {
    @Test func theNewPrimaryShipsThroughTheFenceAndTheOldOneDoesNot() throws {
        let fixture = try Fixture("fence-lineage")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.sql("CREATE TABLE marks (id int PRIMARY KEY, site text)")
        try topology.takeBackup()
        let standby = try topology.startDRStandby(standbyPort: standbyPort)
        try topology.primary.sql("INSERT INTO marks VALUES (1, 'old primary')")
        try waitUntil("the DR standby to replay the old primary's row", timeout: 60) {
            let count = (try? standby.sql("SELECT count(*) FROM marks")) ?? ""
            return (count == "1", count)
        }

        // The primary site is lost; the DR replica is promoted without --force.
        kill(try postmasterPID(of: topology.primary), SIGKILL)
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)
        topology.sender!.kill9()
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool, "--report",
                fixture.logDirectory + "/promotion", "--timeout", "60",
            ], timeout: 150, check: false)
        try #require(promote.status == 0, "\(promote.output)\(promote.error)")
        let systemDirectory = topology.spool + "/" + topology.systemIdentifier
        let fence = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: systemDirectory + "/FENCED")))
                as? [String: Any])
        let history = try standby.sql("SELECT pg_read_file('pg_wal/00000002.history')")
        #expect(fence["promotedTimeline"] as? Int == 2, "\(fence)")
        #expect(fence["parentTimeline"] as? Int == 1, "\(fence)")
        #expect(fence["timelineHistory"] as? String == history + "\n" || fence["timelineHistory"] as? String == history)
        let switchPoint = try #require(fence["switchPoint"] as? String)
        #expect(history.hasPrefix("1\t\(switchPoint)\t"), "\(history) vs \(switchPoint)")
        print("fence: promoted timeline 2 from timeline 1 at \(switchPoint)")

        // A sender beside the new primary ships into the same receiver and spool, without --force.
        let auditPath = systemDirectory + "/audit.log"
        func linkEntries() -> Int {
            ((try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? "").components(separatedBy: #""event":"link""#)
                .count - 1
        }
        let linksBefore = linkEntries()
        try standby.sql("INSERT INTO marks VALUES (2, 'new primary')")
        topology.sender = nil
        try topology.startSender(slot: "walship_new_primary", source: standby.conninfo)
        try standby.sql("INSERT INTO marks VALUES (3, 'new primary')")
        let newEnd = try #require(lsn(try standby.sql("SELECT pg_current_wal_flush_lsn()")))
        try waitUntil("the new primary's WAL to be durable in the spool on timeline 2", timeout: 60) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let system = (status["systems"] as? [[String: Any]])?.first
            let timeline = system?["timeline"] as? Int
            let durable = stageLSN(system, "durable") ?? 0
            return (timeline == 2 && durable >= newEnd, "timeline \(timeline ?? 0), durable \(String(durable, radix: 16))")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
        #expect(files.contains("00000002.history"), "\(files)")
        #expect(files.contains { $0.hasPrefix("00000002") && ($0.hasSuffix(".partial") || $0.hasSuffix(".lz4")) }, "\(files)")
        let stored = try String(contentsOfFile: topology.walDirectory + "/00000002.history", encoding: .utf8)
        #expect(stored == fence["timelineHistory"] as? String)
        #expect(topology.receiver!.log.contains("proved its timeline descends from the promoted timeline"))
        #expect(!topology.sender!.log.contains("promoted at the DR site"), "\(topology.sender!.log.suffix(1500))")
        // The fence's periodic sweep leaves the proven link open: WAL keeps landing seconds later.
        let linkedAt = try fetchStatus(port: topology.receiverStatusPort)
        let connectedAt = ((linkedAt["systems"] as? [[String: Any]])?.first?["link"] as? [String: Any])?["connectedAt"]
        usleep(3_000_000)
        try standby.sql("INSERT INTO marks VALUES (4, 'new primary')")
        let laterEnd = try #require(lsn(try standby.sql("SELECT pg_current_wal_flush_lsn()")))
        try waitUntil("later WAL of the new primary to be durable", timeout: 30) {
            let system = (try fetchStatus(port: topology.receiverStatusPort)["systems"] as? [[String: Any]])?.first
            let durable = stageLSN(system, "durable") ?? 0
            return (durable >= laterEnd, "durable \(String(durable, radix: 16))")
        }
        var still = try fetchStatus(port: topology.receiverStatusPort)
        let link = (still["systems"] as? [[String: Any]])?.first?["link"] as? [String: Any]
        #expect(link?["connected"] as? Bool == true)
        #expect("\(link?["connectedAt"] ?? "")" == "\(connectedAt ?? "-")", "the link was closed and reopened")
        // The link entered the mode history once it had proven its timeline.
        #expect(linkEntries() == linksBefore + 1, "\((try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? "")")

        // A restarted sender finds the spool on timeline 2 already: it proves the timeline again with its history
        // file (the spool only compares it), and its WAL passes.
        topology.sender!.kill9()
        topology.sender = try fixture.walship("sender-restarted", topology.senderArguments)
        try topology.waitUntilStreaming()
        try standby.sql("INSERT INTO marks VALUES (5, 'new primary')")
        let restartedEnd = try #require(lsn(try standby.sql("SELECT pg_current_wal_flush_lsn()")))
        try waitUntil("the restarted sender's WAL to be durable", timeout: 30) {
            let system = (try fetchStatus(port: topology.receiverStatusPort)["systems"] as? [[String: Any]])?.first
            let durable = stageLSN(system, "durable") ?? 0
            return (durable >= restartedEnd, "durable \(String(durable, radix: 16))")
        }
        let proofs = topology.receiver!.log.components(separatedBy: "proved its timeline descends").count - 1
        #expect(proofs == 2, "\(proofs) proofs logged")
        #expect(linkEntries() == linksBefore + 2)

        // A base backup of the new primary lands in the fenced spool too: its history file proves its timeline.
        let backup = try run(
            IT.walshipBinary,
            ["backup", "--source", standby.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)", "--label", "new-primary"]
                + topology.linkArguments("sender"), timeout: 300, check: false)
        #expect(backup.status == 0, "\(backup.output)\(backup.error)")
        func backups() throws -> [[String: Any]] {
            let listing = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
            return try #require(try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [[String: Any]])
        }
        let listed = try backups()
        let newBackup = listed.first { $0["label"] as? String == "new-primary" }
        #expect(newBackup?["timeline"] as? Int == 2, "\(listed)")
        #expect(newBackup?["status"] as? String == "complete", "\(listed)")

        // Nothing the new primary's sender did counts as the old primary knocking (its verdict links included).
        still = try fetchStatus(port: topology.receiverStatusPort)
        let quiet = (still["alerts"] as? [[String: Any]] ?? []).compactMap { $0["condition"] as? String }
        #expect(!quiet.contains("fenced_primary_refused"), "\(quiet)")
        #expect(!topology.receiver!.log.contains("is refused"), "\(topology.receiver!.log.suffix(2000))")

        // The old primary comes back on timeline 1 with a sender of its own: refused at the fence.
        try waitUntil("the old primary to start again", timeout: 60) {
            do {
                try topology.primary.start()
                return (true, "")
            } catch { return (false, "\(error)") }
        }
        let oldStatusPort = IT.freePort()
        let oldSender = try fixture.walship(
            "sender-old-primary",
            [
                "send", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)", "--slot",
                "walship_it", "--create-slot", "--status-listen", "127.0.0.1:\(oldStatusPort)", "--link-timeout", "10",
                "--retry-max-seconds", "2",
            ] + topology.linkArguments("sender"))
        try waitUntil("the receiver to refuse the old primary", timeout: 60) {
            (oldSender.log.contains("timeline 1 is the fenced timeline"), oldSender.log.suffix(1500).description)
        }
        #expect(oldSender.log.contains("promoted at the DR site"))
        let afterRefusal = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
        #expect(
            afterRefusal.filter { $0.hasPrefix("00000001") }.sorted() == files.filter { $0.hasPrefix("00000001") }.sorted(),
            "timeline 1 gained files after the promotion")
        try waitUntil("the fenced_primary_refused alert", timeout: 30) {
            let alerts = (try fetchStatus(port: topology.receiverStatusPort)["alerts"] as? [[String: Any]] ?? [])
                .compactMap { $0["condition"] as? String }
            return (alerts.contains("fenced_primary_refused"), "\(alerts)")
        }
        oldSender.kill9()
        // The old primary's base backup is refused as its WAL is, and the spool gains no backup.
        let backupsBefore = try backups().count
        let oldBackup = try run(
            IT.walshipBinary,
            ["backup", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)"]
                + topology.linkArguments("sender"), timeout: 120, check: false)
        #expect(oldBackup.status != 0)
        #expect(oldBackup.error.contains("promoted at the DR site"), "\(oldBackup.error)")
        #expect(try backups().count == backupsBefore)
    }
}
