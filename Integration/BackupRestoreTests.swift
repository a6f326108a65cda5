import Foundation
import Testing

/// Base backups through the link, then `walship restore` as a streaming DR standby and as a PITR target.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct BackupRestoreTests {
    @Test func backupThroughTheLinkRestoresAStandbyAndAPointInTime() throws {
        let fixture = try Fixture("backup-restore")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])

        let backup = try run(
            IT.walshipBinary,
            [
                "backup", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)",
                "--label", "integration",
            ] + topology.linkArguments("sender"), timeout: 300, check: false)
        #expect(backup.status == 0, "\(backup.error)")
        #expect(backup.output.contains("complete"), "\(backup.output)")
        let listing = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
        let backups = try #require(try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [[String: Any]])
        #expect(backups.count == 1)
        #expect(backups.first?["status"] as? String == "complete")
        #expect(backups.first?["label"] as? String == "integration")

        // A DR standby built from that backup streams from the receiver.
        let standbyData = fixture.directory + "/dr"
        let restored = try run(
            IT.walshipBinary,
            [
                "restore", "--spool", topology.spool, "--pgdata", standbyData, "--standby",
                "--primary-conninfo", "host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr",
            ],
            check: false)
        #expect(restored.status == 0, "\(restored.error)")
        let verify = try run(topology.primary.bin + "/pg_verifybackup", ["-n", standbyData], asPostgres: true, check: false)
        #expect(verify.status == 0, "pg_verifybackup: \(verify.error)\(verify.output)")
        let again = try run(IT.walshipBinary, ["restore", "--spool", topology.spool, "--pgdata", standbyData], check: false)
        #expect(again.status != 0 && again.error.contains("not empty"), "\(again.error)")

        let standby = try fixture.startCopy(
            name: "dr", signal: "standby.signal", settings: ["hot_standby = on", "wal_retrieve_retry_interval = '1s'"])
        try topology.primary.sql("CREATE TABLE visits (id int PRIMARY KEY, at timestamptz DEFAULT now())")
        try topology.primary.sql("INSERT INTO visits SELECT g FROM generate_series(1, 1000) g")
        let before = try topology.primary.sql("SELECT now()")
        try topology.primary.pgbench(["-T", "2", "-c", "2"])
        try topology.primary.sql("INSERT INTO visits SELECT g FROM generate_series(1001, 3000) g")
        let target = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the DR standby to catch up", timeout: 120) {
            let replayed = try standby.sql("SELECT pg_last_wal_replay_lsn()")
            return ((lsn(replayed) ?? 0) >= target, replayed)
        }
        for q in [
            "SELECT count(*) FROM visits", "SELECT sum(abalance), count(*) FROM pgbench_accounts",
            "SELECT count(*) FROM pgbench_history",
        ] {
            #expect(try standby.sql(q) == topology.primary.sql(q), "\(q)")
        }

        // Point in time: only the rows committed before the target time.
        try waitUntil("the spool to hold everything", timeout: 60) { (try topology.durable() >= target, "") }
        let pitrData = fixture.directory + "/pitr"
        let pitr = try run(
            IT.walshipBinary,
            [
                "restore", "--spool", topology.spool, "--pgdata", pitrData, "--target-time", before,
                "--target-action", "promote",
            ], check: false)
        #expect(pitr.status == 0, "\(pitr.error)")
        let copy = try fixture.startCopy(name: "pitr", signal: "recovery.signal", settings: [])
        try waitUntil("the point-in-time copy to promote", timeout: 120) {
            let state = try copy.sql("SELECT pg_is_in_recovery()")
            return (state == "f", state)
        }
        #expect(try copy.sql("SELECT count(*) FROM visits") == "1000")
    }

    /// `--compression high` sends every piece of the backup LZ4HC (`auto`, the default, does so only while pieces
    /// queue behind a link slower than the sender: the compression policy's tests and the slow-link WAL test cover
    /// that), and the stored backup restores to files that match the backup's manifest.
    @Test func aBackupCompressedHarderRestoresExactly() throws {
        let fixture = try Fixture("backup-high")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        let arguments =
            ["backup", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)"]
            + topology.linkArguments("sender")
        let refused = try run(IT.walshipBinary, arguments + ["--compression", "best"], check: false)
        #expect(
            refused.status != 0 && refused.error.contains("--compression must be auto, fast or high, not \"best\""),
            "\(refused.error)")
        let backup = try run(IT.walshipBinary, arguments + ["--compression", "high"], timeout: 300, check: false)
        #expect(backup.status == 0, "\(backup.error)")
        let counts = backup.output.firstMatch(of: /sent as .+ \((\d+) of (\d+) pieces LZ4HC\)/)
        let high = counts.flatMap { Int($0.1) } ?? -1
        let pieces = counts.flatMap { Int($0.2) } ?? 0
        #expect(pieces > 0 && high == pieces, "\(backup.output)")

        let copy = fixture.directory + "/copy"
        let restored = try run(IT.walshipBinary, ["restore", "--spool", topology.spool, "--pgdata", copy], check: false)
        #expect(restored.status == 0, "\(restored.error)")
        let verify = try run(topology.primary.bin + "/pg_verifybackup", ["-n", copy], asPostgres: true, check: false)
        #expect(verify.status == 0, "pg_verifybackup: \(verify.error)\(verify.output)")

        // One flipped byte in the stored archive: restore and drill refuse the backup, naming the damage, before
        // anything is unpacked or started from it.
        let base = topology.spool + "/\(topology.systemIdentifier)/base"
        let id = try #require(try FileManager.default.contentsOfDirectory(atPath: base).first { !$0.hasSuffix(".partial") })
        let archive = base + "/" + id + "/base.tar.lz4"
        try damageContent(ofLZ4File: archive)
        let damagedCopy = fixture.directory + "/damaged"
        let damaged = try run(IT.walshipBinary, ["restore", "--spool", topology.spool, "--pgdata", damagedCopy], check: false)
        #expect(damaged.status != 0, "\(damaged.output)")
        #expect(
            damaged.error.contains("backup \(id) is damaged: \(archive)") && damaged.error.contains("expected CRC-32C")
                && damaged.error.contains("walship backups --spool"), "\(damaged.error)")
        #expect(!FileManager.default.fileExists(atPath: damagedCopy + "/postmaster.pid"))
        #expect(!FileManager.default.fileExists(atPath: damagedCopy + "/PG_VERSION"), "the damaged archive was unpacked")
        let drillDirectory = fixture.directory + "/drill"
        let drill = try run(
            IT.walshipBinary,
            [
                "drill", "--spool", topology.spool, "--workdir", drillDirectory, "--keep",
                "--report", fixture.logDirectory + "/damaged-drill", "--timeout", "30",
            ],
            timeout: 180, check: false)
        #expect(drill.status != 0, "\(drill.output)")
        #expect((drill.output + drill.error).contains("backup \(id) is damaged"), "\(drill.output)\(drill.error)")
        #expect(!FileManager.default.fileExists(atPath: drillDirectory + "/pgdata/postmaster.pid"), "the drill started a server")
    }

    /// Flips one byte of an LZ4 file so that what it decompresses to changes. Not every byte will do: a match
    /// offset moved inside a run of zeros decompresses to the same content, which `lz4 -t` then accepts.
    func damageContent(ofLZ4File path: String) throws {
        let url = URL(fileURLWithPath: path)
        var stored = try Data(contentsOf: url)
        for offset in stride(from: stored.count / 2, to: stored.count - 8, by: 97) {
            stored[offset] ^= 0x01
            try stored.write(to: url)
            if try run("/usr/bin/lz4", ["-tq", path], check: false).status != 0 { return }
            stored[offset] ^= 0x01
        }
        try stored.write(to: url)
        Issue.record("no byte flipped in \(path) changed what it decompresses to")
    }

    /// A backup that takes longer than the link timeout (over a slow link here; a large database anywhere)
    /// completes: each end hears from the other at the keepalive interval all along.
    @Test func aBackupLongerThanTheLinkTimeoutCompletes() throws {
        let fixture = try Fixture("backup-long")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        try topology.startReceiver(linkTimeout: 5)
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        let proxyPort = try fixture.slowLink(to: topology.receiverPort, mbit: 4)
        let started = Date()
        let backup = try run(
            IT.walshipBinary,
            [
                "backup", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(proxyPort)",
                "--link-timeout", "5",
            ] + topology.linkArguments("sender"), timeout: 300, check: false)
        let seconds = Date().timeIntervalSince(started)
        #expect(backup.status == 0, "\(backup.error)")
        #expect(backup.output.contains("complete"), "\(backup.output)")
        #expect(seconds > 10, "the backup took \(seconds) s, not twice the link timeout: this test would not show a timeout")
        let listing = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
        let backups = try #require(try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [[String: Any]])
        #expect(backups.first?["status"] as? String == "complete")
    }

    @Test func restoreRefusesClearly() throws {
        let fixture = try Fixture("restore-refusals")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        try topology.startReceiver()
        try topology.startSender()
        try topology.switchAndWait()
        let none = try run(
            IT.walshipBinary, ["restore", "--spool", topology.spool, "--pgdata", fixture.directory + "/x"], check: false)
        #expect(none.status != 0 && none.error.contains("no complete base backup"), "\(none.error)")
        let conflicting = try run(
            IT.walshipBinary,
            [
                "restore", "--spool", topology.spool, "--pgdata", fixture.directory + "/x",
                "--standby", "--primary-conninfo", "host=x", "--target-lsn", "0/1",
            ], check: false)
        #expect(conflicting.status != 0 && conflicting.error.contains("does not go with --standby"), "\(conflicting.error)")
        let noSpool = try run(IT.walshipBinary, ["backups", "--spool", fixture.directory + "/missing"], check: false)
        #expect(noSpool.status != 0)
    }

    /// A point in time between two backups is restored from the older one: the newer ends after the target, and
    /// recovery cannot stop before a backup's end.
    @Test func aTargetTimeBeforeTheNewestBackupRestoresFromTheOlderOne() throws {
        let fixture = try Fixture("pitr-older")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "1", "-q"])
        let older = try topology.takeBackup()
        try topology.primary.sql("CREATE TABLE marks AS SELECT generate_series(1, 100) AS id")
        let target = try topology.primary.sql("SELECT now()")
        // Backups are stored with whole-second times: let the next one end in a later second than the target.
        let afterTarget = Date().addingTimeInterval(1.5)
        try waitUntil("the clock to pass the target's second", timeout: 5) { (Date() > afterTarget, "") }
        try topology.primary.sql("INSERT INTO marks SELECT generate_series(101, 300)")
        let newer = try topology.takeBackup()
        #expect(!older.isEmpty && !newer.isEmpty && older != newer)
        let end = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        _ = try topology.switchAndWait()
        try waitUntil("the spool to hold everything", timeout: 60) { (try topology.durable() >= end, "") }

        let data = fixture.directory + "/pitr"
        let restored = try run(
            IT.walshipBinary,
            ["restore", "--spool", topology.spool, "--pgdata", data, "--target-time", target, "--target-action", "promote"],
            check: false)
        #expect(restored.status == 0, "\(restored.error)")
        #expect(restored.output.contains("restored backup \(older) "), "\(restored.output)")
        let copy = try fixture.startCopy(name: "pitr", signal: "recovery.signal", settings: [])
        try waitUntil("the point-in-time copy to promote", timeout: 120) {
            let state = try copy.sql("SELECT pg_is_in_recovery()")
            return (state == "f", state)
        }
        #expect(try copy.sql("SELECT count(*) FROM marks") == "100")

        // Naming the newer backup for that target is refused before anything is written.
        let named = try run(
            IT.walshipBinary,
            [
                "restore", "--spool", topology.spool, "--pgdata", fixture.directory + "/named", "--backup", newer,
                "--target-time", target,
            ],
            check: false)
        #expect(named.status != 0 && named.error.contains("after the target time"), "\(named.error)")
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/named/PG_VERSION"))
    }

    /// Backups you can forget about: the receiver raises backup_age while no backup is complete, `walship backup
    /// --if-older-than` takes the first and then declines while it is young, and the alert resolves.
    @Test func scheduledBackupsAreTakenOnlyWhenDueAndTheirAgeIsAlerted() throws {
        let fixture = try Fixture("backup-schedule")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        // Short enough to fire during the test, long enough to stay clear for a while after the backup (whose age
        // counts from its start: under a loaded host the backup alone took 15 s).
        topology.receiverExtra = ["--alert-backup-age", "30s", "--alert-recovery-seconds", "1"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "1", "-q"])
        let statusURL = "http://127.0.0.1:\(topology.receiverStatusPort)"
        func backupAlert() throws -> [String: Any]? {
            ((try fetchStatus(port: topology.receiverStatusPort))["alerts"] as? [[String: Any]])?.first {
                $0["condition"] as? String == "backup_age"
            }
        }
        var firing = ""
        try waitUntil("backup_age to fire without a backup", timeout: 90) {
            firing = try backupAlert().map { "\($0["message"] ?? "")" } ?? ""
            return (!firing.isEmpty, firing)
        }
        #expect(firing.contains("no complete base backup of this system in the spool"), "\(firing)")

        let scheduled =
            [
                "backup", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)",
                "--if-older-than", "1h", "--receiver-status", statusURL,
            ] + topology.linkArguments("sender")
        let first = try run(IT.walshipBinary, scheduled, timeout: 300, check: false)
        #expect(first.status == 0, "\(first.error)")
        #expect(
            first.output.contains("the receiver has no complete base backup of system \(topology.systemIdentifier): taking one"))
        let line = first.output.split(separator: "\n").last { $0.hasPrefix("backup ") && $0.contains(" complete:") } ?? ""
        let id = String(line.split(separator: " ").dropFirst().first ?? "")
        #expect(!id.isEmpty, "\(first.output)")

        // The status names it; the alert resolves.
        let system = ((try fetchStatus(port: topology.receiverStatusPort))["systems"] as? [[String: Any]])?.first
        #expect((system?["newestBackup"] as? [String: Any])?["id"] as? String == id, "\(system ?? [:])")
        let table = try run(IT.walshipBinary, ["status", "--url", statusURL], check: false)
        #expect(table.output.contains("newest backup: \(id), taken"), "\(table.output)")
        try waitUntil("backup_age to resolve", timeout: 10) { (try backupAlert() == nil, "") }

        // Run again while it is young: one line, exit 0, no second backup.
        let second = try run(IT.walshipBinary, scheduled, timeout: 120, check: false)
        #expect(second.status == 0, "\(second.error)")
        #expect(
            second.output.contains(
                "backup not needed: the newest complete base backup of system \(topology.systemIdentifier), \(id), is"),
            "\(second.output)")
        #expect(!second.output.contains("complete:"), "\(second.output)")
        let listing = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
        let ids = try #require(try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [[String: Any]]).compactMap {
            $0["id"] as? String
        }
        #expect(ids == [id], "\(ids)")

        // --if-older-than without the receiver's status is refused before anything starts.
        let withoutStatus = scheduled.filter { $0 != "--receiver-status" && $0 != statusURL }
        let incomplete = try run(IT.walshipBinary, withoutStatus, check: false)
        #expect(
            incomplete.status == 64 && incomplete.error.contains("--if-older-than needs --receiver-status"), "\(incomplete.error)"
        )
    }

    /// `--retain-days`: the receiver keeps a backup the count alone would drop while the window needs it; `walship
    /// prune` reads the receiver's settings from the configuration file and refuses to remove files beside it.
    @Test func aRecoveryWindowKeepsWhatItNeedsAndPruneTakesTheSpoolsLock() throws {
        let fixture = try Fixture("retention-window")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        topology.receiverExtra = ["--retain-backups", "1", "--retain-days", "1"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "1", "-q"])
        let first = try topology.takeBackup()
        try topology.primary.pgbench(["-T", "1", "-c", "2"])
        _ = try topology.switchAndWait()
        let second = try topology.takeBackup()
        // No backup is a day old: the window keeps both, where --retain-backups 1 alone would keep the second only.
        let listing = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
        let ids = try #require(try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [[String: Any]]).compactMap {
            $0["id"] as? String
        }
        #expect(ids == [first, second], "\(ids)")

        // prune --config takes the spool and the retention from [receive]; a command-line option wins.
        let config = fixture.directory + "/walship.toml"
        try """
        [receive]
        listen = "127.0.0.1:\(topology.receiverPort)"
        spool = "\(topology.spool)"
        retain-backups = 1
        retain-days = 1
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let fromFile = try run(IT.walshipBinary, ["prune", "--config", config, "--dry-run"])
        #expect(
            fromFile.output.contains("retention: keep 1 backup(s), and a recovery window of 1d (from \(config) [receive]"),
            "\(fromFile.output)")
        #expect(
            fromFile.output.contains("no backup is that old") && fromFile.output.contains("nothing to remove"),
            "\(fromFile.output)")
        // A 1 s window needs the first backup only while the second is less than a second old.
        try waitUntil("a 1 s recovery window to leave the first backup out", timeout: 30) {
            let narrower = try run(IT.walshipBinary, ["prune", "--config", config, "--retain-days", "1s", "--dry-run"])
            return (narrower.output.contains("would remove backup \(first)"), narrower.output)
        }

        // Removing files needs the spool's lock, which the running receiver holds.
        let beside = try run(IT.walshipBinary, ["prune", "--config", config, "--retain-days", "1s"], check: false)
        #expect(beside.status != 0 && beside.error.contains("in use by a running walship receive"), "\(beside.error)")
        let still = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
        #expect(still.output.contains(first), "\(still.output)")
    }

    @Test func retentionKeepsWhatRecoveryNeeds() throws {
        let fixture = try Fixture("retention")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        topology.receiverExtra = ["--retain-backups", "1"]
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "1", "-q"])
        let first = try topology.takeBackup()
        for _ in 0..<3 {
            try topology.primary.pgbench(["-T", "1", "-c", "2"])
            try topology.switchAndWait()
        }
        let second = try topology.takeBackup()
        #expect(first != second)

        // The receiver pruned after the second backup completed: the first backup and the WAL before the second's start are gone.
        let listing = try run(IT.walshipBinary, ["backups", "--spool", topology.spool, "--json"])
        let ids = try #require(try JSONSerialization.jsonObject(with: Data(listing.output.utf8)) as? [[String: Any]]).compactMap {
            $0["id"] as? String
        }
        #expect(ids == [second], "\(ids)")
        // Completed segments and the in-progress one: the first left must be the kept backup's start segment.
        let kept = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
            .filter { $0.hasSuffix(".lz4") || $0.hasSuffix(".partial") }.map { String($0.prefix(24)) }.sorted()
        let info = try #require(
            try JSONSerialization.jsonObject(
                with: Data(
                    contentsOf: URL(
                        fileURLWithPath:
                            topology.spool + "/\(topology.systemIdentifier)/base/\(second)/backup.json"))) as? [String: Any])
        let startSegment = try topology.primary.sql("SELECT pg_walfile_name('\(info["startLSN"] as! String)')")
        #expect(kept.first == startSegment, "\(kept.prefix(3)) vs \(startSegment)")
        let dry = try run(IT.walshipBinary, ["prune", "--spool", topology.spool, "--retain-backups", "1", "--dry-run"])
        #expect(dry.output.contains("nothing to remove"), "\(dry.output)")

        // A restore from the oldest kept backup still reaches the newest WAL.
        try topology.primary.sql("CREATE TABLE newest AS SELECT generate_series(1, 4321) AS id")
        let end = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the newest WAL in the spool", timeout: 60) { (try topology.durable() >= end, "") }
        let expected = try topology.primary.sql("SELECT sum(delta), count(*) FROM pgbench_history")
        topology.primary.stopImmediately()
        try run(
            IT.walshipBinary,
            ["restore", "--spool", topology.spool, "--pgdata", fixture.directory + "/from-kept", "--target-action", "promote"])
        let copy = try fixture.startCopy(name: "from-kept", signal: "recovery.signal", settings: [])
        try waitUntil("the copy to finish recovery", timeout: 120) { (try copy.sql("SELECT pg_is_in_recovery()") == "f", "") }
        #expect(try copy.sql("SELECT count(*) FROM newest") == "4321")
        #expect(try copy.sql("SELECT sum(delta), count(*) FROM pgbench_history") == expected)
    }
}
