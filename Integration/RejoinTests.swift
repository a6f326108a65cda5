import Foundation
import Testing

/// After an unplanned failover, `walship rejoin` brings the old primary back by difference: the commits the DR site
/// never got are set aside and counted, pg_rewind copies a fraction of the database, and the old primary replays
/// the new primary's writes through a receiver at its own site.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct RejoinTests {
    /// The primary site (async link to the DR site) and a failover to the DR replica with an async tail lost.
    struct Failover {
        var topology: ShipTopology
        let newPrimary: Cluster
        let lostCommits: Int
        /// The DR receiver's standby endpoint, which the new primary followed before its promotion.
        let standbyPort: Int
    }

    /// `receiverExtra`: more options for the DR receiver. `checkpointBeforeTheFork`: a checkpoint and a segment switch
    /// before the last replayed commits, so that the last checkpoint both servers share lies in a segment before the
    /// fork's; and one more checkpoint on the old primary after its lost commits, as a primary that ran on after the
    /// fork makes (and then recycles the WAL before it).
    func failOver(
        _ fixture: Fixture, primarySettings: [String: String], lostCommits: Int, receiverExtra: [String] = [],
        checkpointBeforeTheFork: Bool = false
    ) throws -> Failover {
        var topology = try ShipTopology(fixture, primarySettings: primarySettings, spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"] + receiverExtra
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "5", "-q"])
        try topology.primary.sql("CREATE TABLE visits (id int PRIMARY KEY, site text)")
        try topology.takeBackup()
        let dr = try topology.startDRStandby(standbyPort: standbyPort)
        if checkpointBeforeTheFork {
            try topology.primary.sql("CHECKPOINT")
            try topology.primary.sql("SELECT pg_switch_wal()")
        }
        try topology.primary.sql("INSERT INTO visits SELECT g, 'both sites' FROM generate_series(1, 100) g")
        try waitUntil("the DR standby to replay the first 100 visits", timeout: 60) {
            let count = (try? dr.sql("SELECT count(*) FROM visits")) ?? ""
            return (count == "100", count)
        }
        // The async tail: the sender is frozen while the primary commits, then the primary dies.
        topology.sender!.signal(SIGSTOP)
        for id in 101..<(101 + lostCommits) {
            try topology.primary.sql("INSERT INTO visits VALUES (\(id), 'lost')")
        }
        if checkpointBeforeTheFork { try topology.primary.sql("CHECKPOINT") }
        kill(try postmasterPID(of: topology.primary), SIGKILL)
        topology.sender!.kill9()
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", dr.dataDirectory, "--spool", topology.spool, "--force", "--report",
                fixture.logDirectory + "/promotion", "--timeout", "60",
            ], timeout: 150, check: false)
        try #require(promote.status == 0, "\(promote.output)\(promote.error)")
        try dr.sql("INSERT INTO visits SELECT g, 'new primary' FROM generate_series(1001, 1010) g")
        return Failover(topology: topology, newPrimary: dr, lostCommits: lostCommits, standbyPort: standbyPort)
    }

    /// The old primary's site: a receiver of its own, fed by a sender beside the new primary.
    struct HomeSite {
        let spool: String
        let port: Int
        let standbyPort: Int
        let newSenderStatus: Int
    }

    func homeSite(_ fixture: Fixture, _ failover: Failover) throws -> HomeSite {
        let topology = failover.topology
        let homeSpool = try fixture.postgresDirectory("home-spool")
        let homePort = IT.freePort()
        let homeStandbyPort = IT.freePort()
        let homeStatusPort = IT.freePort()
        let receiveArguments =
            ["receive", "--listen", "127.0.0.1:\(homePort)", "--spool", homeSpool]
            + topology.linkArguments("receiver") + [
                "--status-listen", "127.0.0.1:\(homeStatusPort)", "--standby-listen", "127.0.0.1:\(homeStandbyPort)",
                "--standby-trust",
            ]
        _ = try fixture.daemon(
            "home-receiver", "/usr/bin/setpriv",
            ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", IT.walshipBinary] + receiveArguments)
        let newSenderStatus = IT.freePort()
        let newSender = try fixture.walship(
            "sender-new-primary",
            [
                "send", "--source", failover.newPrimary.conninfo, "--to", "127.0.0.1:\(homePort)", "--slot", "walship_home",
                "--create-slot", "--standby-wait", "--status-listen", "127.0.0.1:\(newSenderStatus)", "--link-timeout", "10",
                "--retry-max-seconds", "2",
            ] + topology.linkArguments("sender"))
        try waitUntil("the new primary's sender to stream to the old primary's site", timeout: 60) {
            let state = (try? fetchStatus(port: newSenderStatus))?["state"] as? String
            return (state == "streaming", "state=\(state ?? "nil")\n\(newSender.log.suffix(1500))")
        }
        return HomeSite(spool: homeSpool, port: homePort, standbyPort: homeStandbyPort, newSenderStatus: newSenderStatus)
    }

    @Test func theOldPrimaryRejoinsByDifferenceAndWhatWasLostIsSetAside() throws {
        let fixture = try Fixture("rejoin")
        defer { fixture.tearDown() }
        let failover = try failOver(fixture, primarySettings: ["wal_log_hints": "on"], lostCommits: 30)
        let topology = failover.topology
        let oldPrimary = topology.primary
        oldPrimary.stopImmediately()

        let home = try homeSite(fixture, failover)
        let (homeSpool, homeStandbyPort, newSenderStatus) = (home.spool, home.standbyPort, home.newSenderStatus)

        let rejoin = try run(
            IT.walshipBinary,
            [
                "rejoin", "--pgdata", oldPrimary.dataDirectory, "--source", failover.newPrimary.conninfo,
                "--primary-conninfo", "host=127.0.0.1 port=\(homeStandbyPort) user=postgres application_name=home",
                "--spool", homeSpool, "--report", fixture.logDirectory + "/rejoin", "--start",
                "--keep-copy", fixture.directory + "/old-primary-as-it-was",
            ], timeout: 300, check: false)
        #expect(rejoin.status == 0, "\(rejoin.output)\(rejoin.error)")
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture.logDirectory + "/rejoin.json")))
                as? [String: Any])
        let lost = report["lostWAL"] as? [String: Any]
        #expect(lost?["commits"] as? Int == failover.lostCommits, "\(report)")
        let copied = try #require(report["bytesCopied"] as? Int, "\(report)")
        let size = try #require(report["sourceBytes"] as? Int, "\(report)")
        print("rejoin: pg_rewind copied \(copied) bytes of \(size); set aside \(lost?["commits"] ?? "?") commits")
        #expect(copied < size / 2, "copied \(copied) of \(size)")
        // The set-aside WAL holds the lost rows' commits; the kept copy is the old primary as it was.
        let aside = try #require(report["setAsideDirectory"] as? String)
        #expect(!(try FileManager.default.contentsOfDirectory(atPath: aside)).isEmpty)
        #expect(FileManager.default.fileExists(atPath: fixture.directory + "/old-primary-as-it-was/PG_VERSION"))

        // The rejoined old primary replays the new primary's writes through walship, and not the lost ones.
        try failover.newPrimary.sql("INSERT INTO visits SELECT g, 'after rejoin' FROM generate_series(2001, 2005) g")
        let target = try #require(lsn(try failover.newPrimary.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the rejoined old primary to replay the new primary's writes", timeout: 120) {
            let replayed = (try? oldPrimary.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= target, replayed)
        }
        #expect(try oldPrimary.sql("SELECT pg_is_in_recovery()") == "t")
        let query = "SELECT count(*), sum(id) FROM visits"
        #expect(try oldPrimary.sql(query) == failover.newPrimary.sql(query))
        #expect(try oldPrimary.sql("SELECT count(*) FROM visits WHERE site = 'lost'") == "0")

        // Coming home: a sender beside the rejoined standby waits (--standby-wait) while it is a standby; walship
        // switchover at the new primary's site, then at home, reverses the sites with nothing lost.
        let homeSenderStatus = IT.freePort()
        let homeSender = try fixture.walship(
            "sender-home",
            [
                "send", "--source", oldPrimary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)", "--slot", "walship_back",
                "--create-slot", "--standby-wait", "--status-listen", "127.0.0.1:\(homeSenderStatus)", "--link-timeout", "10",
                "--retry-max-seconds", "2", "--alert-disconnect-seconds", "1",
            ] + topology.linkArguments("sender"))
        try waitUntil("the sender beside the standby to wait for its promotion", timeout: 30) {
            let state = (try? fetchStatus(port: homeSenderStatus))?["state"] as? String
            return (state == "waiting for promotion", "state=\(state ?? "nil")\n\(homeSender.log.suffix(1500))")
        }
        usleep(2_500_000)
        let waiting = try fetchStatus(port: homeSenderStatus)
        #expect(waiting["state"] as? String == "waiting for promotion")
        #expect((waiting["alerts"] as? [[String: Any]] ?? []).isEmpty, "\(waiting["alerts"] ?? "")")
        #expect((waiting["health"] as? [String: Any])?["status"] as? String == "ok", "\(waiting["health"] ?? "")")

        let demote = try run(
            IT.walshipBinary,
            [
                "switchover", "--pgdata", failover.newPrimary.dataDirectory, "--spool", topology.spool, "--primary-conninfo",
                "host=127.0.0.1 port=\(failover.standbyPort) user=postgres application_name=dr_replica", "--sender-status",
                "127.0.0.1:\(newSenderStatus)", "--slot", "walship_home", "--allow-async", "--timeout", "60", "--report",
                fixture.logDirectory + "/switch-back-at-dr",
            ], timeout: 300, check: false)
        try #require(demote.status == 0, "\(demote.output)\(demote.error)")
        let demoted = try #require(
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: fixture.logDirectory + "/switch-back-at-dr.json"))) as? [String: Any])
        let checkpoint = try #require(demoted["shutdownCheckpointLSN"] as? String, "\(demoted)")
        let promote = try run(
            IT.walshipBinary,
            [
                "switchover", "--pgdata", oldPrimary.dataDirectory, "--spool", homeSpool, "--slot", "walship_back",
                "--shutdown-checkpoint", checkpoint, "--timeout", "60", "--report", fixture.logDirectory + "/switch-back-at-home",
            ], timeout: 300, check: false)
        try #require(promote.status == 0, "\(promote.output)\(promote.error)")
        #expect(try oldPrimary.sql("SELECT pg_is_in_recovery()") == "f")
        try oldPrimary.sql("INSERT INTO visits VALUES (3001, 'home again')")
        let homeEnd = try #require(lsn(try oldPrimary.sql("SELECT pg_current_wal_flush_lsn()")))
        try waitUntil("the home site's WAL to be durable at the DR site on timeline 3", timeout: 60) {
            let system = (try fetchStatus(port: topology.receiverStatusPort)["systems"] as? [[String: Any]])?.first
            let timeline = system?["timeline"] as? Int
            let durable = stageLSN(system, "durable") ?? 0
            return (timeline == 3 && durable >= homeEnd, "timeline \(timeline ?? 0), durable \(String(durable, radix: 16))")
        }
        // The DR server, demoted, replays the home site's writes through the DR receiver: both sites agree.
        try waitUntil("the demoted DR server to replay the home site's writes", timeout: 120) {
            let replayed = (try? failover.newPrimary.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= homeEnd, replayed)
        }
        #expect(try failover.newPrimary.sql(query) == oldPrimary.sql(query))
        #expect(try failover.newPrimary.sql("SELECT count(*) FROM visits WHERE site = 'after rejoin'") == "5")
        #expect(homeSender.log.contains("waiting for its promotion"))
    }

    /// The old primary's pg_wal and its site's spool no longer hold the segment of the last checkpoint both servers
    /// share (recycled): pg_rewind's restore_command fetches it from the DR site's spool through that receiver's
    /// control endpoint (`--wal-from-peer`), over mutual TLS for the one certificate it allows.
    @Test func oldTimelineWALComesFromThePeersSpoolWhenNoLongerHere() throws {
        let fixture = try Fixture("rejoin-peer-wal")
        defer { fixture.tearDown() }
        let control = IT.freePort()
        let failover = try failOver(
            fixture, primarySettings: ["wal_log_hints": "on"], lostCommits: 5,
            receiverExtra: ["--control-listen", "127.0.0.1:\(control)", "--control-allow", "walship-sender"],
            checkpointBeforeTheFork: true)
        let topology = failover.topology
        let oldPrimary = topology.primary
        oldPrimary.stopImmediately()
        let home = try homeSite(fixture, failover)

        // Its checkpoint after the fork recycled the segments before it, among them the one of the last checkpoint
        // it shares with the new primary (just before the fork's): pg_wal no longer has it, nor does this site's spool.
        let controlData = try run(oldPrimary.bin + "/pg_controldata", [oldPrimary.dataDirectory]).output
        let redoFile = try #require(
            controlData.firstMatch(of: /Latest checkpoint's REDO WAL file:\s+([0-9A-F]{24})/).map { String($0.output.1) })
        let number = UInt64(redoFile.suffix(16), radix: 16).map { ($0 >> 32) * 0x100 + ($0 & 0xFF) } ?? 0
        let shared = String(redoFile.prefix(8)) + String(format: "%08llX%08llX", (number - 1) / 0x100, (number - 1) % 0x100)
        let walDirectory = oldPrimary.dataDirectory + "/pg_wal"
        #expect(!FileManager.default.fileExists(atPath: walDirectory + "/" + shared), "\(shared) is still in pg_wal")
        #expect(!FileManager.default.fileExists(atPath: home.spool + "/\(topology.systemIdentifier)/wal/\(shared).lz4"))

        let certificates = topology.certificates
        let rejoin = try run(
            IT.walshipBinary,
            [
                "rejoin", "--pgdata", oldPrimary.dataDirectory, "--source", failover.newPrimary.conninfo,
                "--primary-conninfo", "host=127.0.0.1 port=\(home.standbyPort) user=postgres application_name=home",
                "--spool", home.spool, "--report", fixture.logDirectory + "/rejoin", "--start", "--wal-from-peer",
                "127.0.0.1:\(control)", "--tls-cert", certificates + "/sender.crt", "--tls-key", certificates + "/sender.key",
                "--tls-ca", certificates + "/ca.crt",
            ], timeout: 300, check: false)
        #expect(rejoin.status == 0, "\(rejoin.output)\(rejoin.error)")
        // The DR receiver served it.
        #expect(topology.receiver!.log.contains("walship.action=wal"), "\(topology.receiver!.log.suffix(2000))")
        try failover.newPrimary.sql("INSERT INTO visits SELECT g, 'after rejoin' FROM generate_series(2001, 2005) g")
        let target = try #require(lsn(try failover.newPrimary.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the rejoined old primary to replay the new primary's writes", timeout: 120) {
            let replayed = (try? oldPrimary.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= target, replayed)
        }
        let query = "SELECT count(*), sum(id) FROM visits"
        #expect(try oldPrimary.sql(query) == failover.newPrimary.sql(query))

        // What an interrupted fetch left behind does not leak into the next: the segment arrives as the DR spool
        // holds it, not over the longer leftover.
        let fetched = fixture.directory + "/" + shared
        try Data(repeating: UInt8(ascii: "x"), count: 17 << 20).write(to: URL(fileURLWithPath: fetched + ".walship-partial"))
        let emptySpool = try fixture.postgresDirectory("empty-spool")
        try run(
            IT.walshipBinary,
            [
                "restore-wal", "--spool", emptySpool, "--peer-control", "127.0.0.1:\(control)", "--tls-cert",
                certificates + "/sender.crt", "--tls-key", certificates + "/sender.key", "--tls-ca", certificates + "/ca.crt",
                shared, fetched,
            ])
        // (Written elsewhere: restore-wal does not copy a file its destination's directory already holds whole.)
        let reference = try fixture.postgresDirectory("from-dr-spool") + "/" + shared
        try run(IT.walshipBinary, ["restore-wal", "--spool", topology.spool, shared, reference])
        #expect(try Data(contentsOf: URL(fileURLWithPath: fetched)) == Data(contentsOf: URL(fileURLWithPath: reference)))

        // A certificate the endpoint does not take (the receiver's, not one for a client) gets nothing; restore-wal
        // says why and exits 1, as for a file not to be had.
        let refused = try run(
            IT.walshipBinary,
            [
                "restore-wal", "--spool", home.spool, "--peer-control", "127.0.0.1:\(control)", "--tls-cert",
                certificates + "/receiver.crt", "--tls-key", certificates + "/receiver.key", "--tls-ca",
                certificates + "/ca.crt", shared, fixture.directory + "/fetched",
            ], check: false)
        #expect(refused.status == 1 && refused.error.contains("the peer did not give it"), "\(refused.error)")
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/fetched"))
    }

    @Test func aDirectoryWithoutHintsOrChecksumsIsRefusedUntouched() throws {
        let fixture = try Fixture("rejoin-refused")
        defer { fixture.tearDown() }
        let failover = try failOver(fixture, primarySettings: [:], lostCommits: 3)
        let oldPrimary = failover.topology.primary
        oldPrimary.stopImmediately()
        let before = try run(
            "/usr/bin/find",
            [
                oldPrimary.dataDirectory, "-type", "f", "-newer", oldPrimary.dataDirectory + "/PG_VERSION", "-printf",
                "%p %s %T@\n",
            ])
        let rejoin = try run(
            IT.walshipBinary,
            [
                "rejoin", "--pgdata", oldPrimary.dataDirectory, "--source", failover.newPrimary.conninfo,
                "--primary-conninfo", "host=127.0.0.1 port=1 user=postgres", "--spool", failover.topology.spool,
                "--report", fixture.logDirectory + "/rejoin",
            ], timeout: 120, check: false)
        #expect(rejoin.status == 1)
        #expect(rejoin.error.contains("neither wal_log_hints nor data checksums"), "\(rejoin.error)")
        #expect(rejoin.error.contains("hint: re-seed it instead"), "\(rejoin.error)")
        let after = try run(
            "/usr/bin/find",
            [
                oldPrimary.dataDirectory, "-type", "f", "-newer", oldPrimary.dataDirectory + "/PG_VERSION", "-printf",
                "%p %s %T@\n",
            ])
        #expect(after.output == before.output, "the data directory changed")
        let report = try String(contentsOfFile: fixture.logDirectory + "/rejoin.json", encoding: .utf8)
        #expect(report.contains(#""outcome" : "refused""#), "\(report)")

        // --reseed: the directory goes aside whole, a base backup of the new primary comes through this site's
        // receiver, and the old server follows the new primary from it.
        let home = try homeSite(fixture, failover)
        let reseeded = try run(
            IT.walshipBinary,
            [
                "rejoin", "--pgdata", oldPrimary.dataDirectory, "--source", failover.newPrimary.conninfo,
                "--primary-conninfo", "host=127.0.0.1 port=\(home.standbyPort) user=postgres application_name=home",
                "--spool", home.spool, "--report", fixture.logDirectory + "/reseed", "--start", "--reseed", "--reseed-to",
                "127.0.0.1:\(home.port)",
            ] + failover.topology.linkArguments("sender"), timeout: 300, check: false)
        #expect(reseeded.status == 0, "\(reseeded.output)\(reseeded.error)")
        let evidence = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture.logDirectory + "/reseed.json")))
                as? [String: Any])
        #expect(evidence["outcome"] as? String == "reseeded", "\(evidence)")
        let aside = try #require(evidence["keptAside"] as? String)
        #expect(FileManager.default.fileExists(atPath: aside + "/PG_VERSION"))
        #expect((evidence["reseedReason"] as? String)?.contains("neither wal_log_hints nor data checksums") == true)
        try failover.newPrimary.sql("INSERT INTO visits SELECT g, 'after reseed' FROM generate_series(4001, 4005) g")
        let target = try #require(lsn(try failover.newPrimary.sql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the re-seeded old primary to replay the new primary's writes", timeout: 120) {
            let replayed = (try? oldPrimary.sql("SELECT pg_last_wal_replay_lsn()")) ?? ""
            return ((lsn(replayed) ?? 0) >= target, replayed)
        }
        let query = "SELECT count(*), sum(id) FROM visits"
        #expect(try oldPrimary.sql(query) == failover.newPrimary.sql(query))
        #expect(try oldPrimary.sql("SELECT count(*) FROM visits WHERE site = 'lost'") == "0")
    }
}
