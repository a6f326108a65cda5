import Foundation
import Testing

/// A failover at the primary site: the sender follows the promoted local standby to timeline 2.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct TimelineTests {
    @Test func senderFollowsALocalFailoverToTheNewTimeline() throws {
        let fixture = try Fixture("timeline-follow")
        defer { fixture.tearDown() }
        let (topology, partner, multiHost, standbyPort) = try shipWithALocalPartner(fixture)
        let drStandby = try startDRStandby(fixture, topology, standbyPort: standbyPort)
        try topology.primary.sql("CREATE TABLE admissions (id int PRIMARY KEY, site text)")
        try topology.primary.sql("INSERT INTO admissions SELECT g, 'before' FROM generate_series(1, 1000) g")
        let beforeFailover = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitForPartnerAndDRSite(partner, topology, through: beforeFailover)

        topology.primary.stopImmediately()
        try run(partner.bin + "/pg_ctl", ["-D", partner.dataDirectory, "-w", "promote"], asPostgres: true)
        try waitUntil("the partner to accept writes", timeout: 60) { (try partner.sql("SELECT pg_is_in_recovery()") == "f", "") }
        try partner.sql("INSERT INTO admissions SELECT g, 'after' FROM generate_series(1001, 1500) g")
        let afterFailover = try lsn(partner.sql("SELECT pg_current_wal_lsn()"))!

        try waitForTheSpoolOnTimeline2(topology, through: afterFailover)
        #expect(FileManager.default.fileExists(atPath: topology.walDirectory + "/00000002.history"))

        // The DR standby follows to timeline 2 and keeps replaying.
        try waitUntil("the DR standby to replay past the failover", timeout: 120) {
            let replayed = lsn(try drStandby.sql("SELECT pg_last_wal_replay_lsn()")) ?? 0
            return (replayed >= afterFailover, String(replayed, radix: 16))
        }
        #expect(try drStandby.sql("SELECT count(*) FROM admissions") == "1500")
        // It learnt of the switch over its stream (the end of timeline 1, then timeline 2's history), not only
        // through restore_command.
        let receiverLog = topology.receiver?.log ?? ""
        #expect(
            receiverLog.contains("standby reached the end of its timeline"),
            "\(receiverLog.split(separator: "\n").filter { $0.contains("standby") }.suffix(20).joined(separator: "\n"))")
        #expect(try drStandby.sql("SELECT pg_is_in_recovery()") == "t")

        // A copy recovered from the spool alone follows timeline 2 and has every row.
        let copy = try recoverTheDRCopyFromTheSpool(fixture, topology)
        #expect(try copy.sql("SELECT count(*), count(*) FILTER (WHERE site = 'after') FROM admissions") == "1500|500")
        #expect(try copy.sql("SELECT timeline_id FROM pg_control_checkpoint()") != "1")
    }

    /// `--on-receiver-loss degrade-after`, and the primary site fails over while the DR site is unreachable,
    /// to a partner that never received the last commits acknowledged from the sender's local buffer. The
    /// buffer is kept (commits wait rather than being acknowledged on the new timeline over it); when the
    /// receiver returns it gets the buffer up to the fork and follows the new primary, and the buffer, with the
    /// commits the new primary never had, is set aside for the DBA.
    @Test func commitsAcknowledgedFromTheBufferOutliveAFailoverAtThePrimarySite() throws {
        let fixture = try Fixture("timeline-degraded")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(
            fixture,
            primarySettings: [
                "hot_standby": "on", "synchronous_standby_names": "'walship'",
                "wal_sender_timeout": "'5s'",
            ], spoolOwnedByPostgres: true)
        try topology.startReceiver(linkTimeout: 5)
        let (partner, multiHost) = try startLocalPartner(fixture, topology)
        let buffer = fixture.directory + "/buffer"
        try topology.startSender(
            extra: ["--sync", "--link-timeout", "5", "--on-receiver-loss", "degrade-after=2s", "--buffer-dir", buffer],
            source: multiHost)
        try topology.primary.sql("CREATE TABLE admissions (id int PRIMARY KEY)")
        try topology.primary.sql("INSERT INTO admissions SELECT generate_series(1, 100)")
        // A fresh segment, which the partner reaches and then stops following.
        let switchedAt = try lsn(topology.primary.sql("SELECT pg_switch_wal()"))!
        let segmentStart = (switchedAt / (16 << 20) + 1) * (16 << 20)
        try topology.primary.sql("INSERT INTO admissions VALUES (101)")
        let synchronousEnd = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitForPartnerAndDRSite(partner, topology, through: synchronousEnd)
        try partner.sql("ALTER SYSTEM SET primary_conninfo = ''")
        try partner.sql("SELECT pg_reload_conf()")
        try waitUntil("the partner to stop streaming", timeout: 30) {
            (try partner.sql("SELECT count(*) FROM pg_stat_wal_receiver") == "0", "")
        }

        // The DR site goes away; after 2 s commits are acknowledged from the buffer alone.
        topology.receiver!.kill9()
        for id in 102...131 { try topology.primary.sql("INSERT INTO admissions VALUES (\(id))") }
        let acknowledgedEnd = try lsn(topology.primary.sql("SELECT pg_current_wal_flush_lsn()"))!
        #expect(acknowledgedEnd / (16 << 20) == segmentStart / (16 << 20), "the test expects one segment")
        let degraded = try fetchStatus(port: topology.senderStatusPort)
        #expect((degraded["sender"] as? [String: Any])?["degraded"] as? Bool == true, "\(degraded)")

        // The primary site fails over to the partner, which never had commits 102-131.
        topology.primary.stopImmediately()
        try run(partner.bin + "/pg_ctl", ["-D", partner.dataDirectory, "-w", "promote"], asPostgres: true)
        try waitUntil("the partner to accept writes", timeout: 60) { (try partner.sql("SELECT pg_is_in_recovery()") == "f", "") }
        #expect(try partner.sql("SELECT count(*) FROM admissions") == "101")
        // On the new timeline the sender does not degrade over the buffer: it is kept, and commits wait.
        try waitUntil("the sender to keep the buffer for the receiver", timeout: 60) {
            (topology.sender!.log.contains("the local buffer holds WAL of timeline 1"), String(topology.sender!.log.suffix(1500)))
        }
        #expect(FileManager.default.fileExists(atPath: buffer + "/" + topology.systemIdentifier + "/system.conf"))
        try waitUntil("the sender to say it no longer acknowledges", timeout: 30) {
            let status = try fetchStatus(port: topology.senderStatusPort)
            return (
                status["state"] as? String == "retrying" && (status["sender"] as? [String: Any])?["rpoExposure"] != nil,
                "\(status)"
            )
        }
        try partner.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        try partner.sql("SELECT pg_reload_conf()")
        try partner.sql("INSERT INTO admissions SELECT generate_series(1001, 1100)")
        let afterFailover = try lsn(partner.sql("SELECT pg_current_wal_lsn()"))!

        // The DR site returns: it gets the buffered WAL up to the fork on timeline 1, then follows timeline 2.
        try topology.startReceiver(linkTimeout: 5)
        try waitForTheSpoolOnTimeline2(topology, through: afterFailover)
        // Commits 102-131 were acknowledged after the partner forked off: the new timeline never had them, and a
        // DR standby that replayed them could not follow it. The buffer that holds them is set aside, not dropped.
        try waitUntil("the buffer to be set aside", timeout: 30) {
            let audit = (try? String(contentsOfFile: buffer + "/audit.log", encoding: .utf8)) ?? ""
            return (audit.contains(#""event":"set-aside""#), audit)
        }
        #expect(!FileManager.default.fileExists(atPath: buffer + "/" + topology.systemIdentifier + "/system.conf"))
        let keptName = try #require(
            try FileManager.default.contentsOfDirectory(atPath: buffer)
                .first { $0.hasPrefix(topology.systemIdentifier + ".timeline-1.set-aside-") })
        let segment = String(
            format: "00000001%08X%08X", UInt32(truncatingIfNeeded: segmentStart >> 32),
            UInt32(truncatingIfNeeded: (segmentStart & 0xFFFF_FFFF) / (16 << 20)))
        let start = String(
            format: "%X/%X", UInt32(truncatingIfNeeded: segmentStart >> 32), UInt32(truncatingIfNeeded: segmentStart))
        let end = String(
            format: "%X/%X", UInt32(truncatingIfNeeded: acknowledgedEnd >> 32), UInt32(truncatingIfNeeded: acknowledgedEnd))
        /// The segment's WAL as `walship extract-partial` reads it from `spool`, then `pg_waldump` up to the acknowledged end.
        func dumpThroughAcknowledgedEnd(spool: String, _ name: String) throws -> CommandResult {
            let out = try fixture.postgresDirectory(name)
            _ = try run(IT.walshipBinary, ["extract-partial", "--spool", spool, segment, out + "/" + segment])
            return try run(topology.primary.bin + "/pg_waldump", ["-p", out, "-t", "1", "-s", start, "-e", end], check: false)
        }
        let keptRoot = try fixture.postgresDirectory("kept-root")
        try FileManager.default.createSymbolicLink(
            atPath: keptRoot + "/" + topology.systemIdentifier, withDestinationPath: buffer + "/" + keptName)
        let kept = try dumpThroughAcknowledgedEnd(spool: keptRoot, "kept")
        #expect(kept.status == 0, "\(kept.output.suffix(800))\(kept.error)")
        #expect(kept.output.components(separatedBy: "INSERT").count - 1 >= 30, "\(kept.output.suffix(800))")
        // The DR site's timeline 1 ends at the fork.
        let spooled = try dumpThroughAcknowledgedEnd(spool: topology.spool, "spooled")
        #expect(
            spooled.status != 0 && spooled.output.contains("desc: INSERT off 101"),
            "\(spooled.output.suffix(800))\(spooled.error)")
    }

    /// A failover at the primary site to a partner that lagged several segments: the spool's old timeline reaches
    /// far beyond the fork. A receiver restarted right after the switch, with no sender connected, must reopen on
    /// timeline 2 by itself (its status and its standby endpoint say so before any sender returns), then follow
    /// it; the DR standby replays it, and a copy recovered from the spool alone matches the new primary.
    @Test func aReceiverRestartedAfterAFailoverBehindTheSpoolsEndReopensOnTheNewTimeline() throws {
        let fixture = try Fixture("timeline-restart")
        defer { fixture.tearDown() }
        let (shipping, partner, multiHost, standbyPort) = try shipWithALocalPartner(fixture)
        var topology = shipping
        try topology.primary.sql("CREATE TABLE admissions (id int PRIMARY KEY, site text)")
        try topology.primary.sql("INSERT INTO admissions SELECT g, 'before' FROM generate_series(1, 1000) g")
        let partnerEnd = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitForPartnerAndDRSite(partner, topology, through: partnerEnd)
        try partner.sql("ALTER SYSTEM SET primary_conninfo = ''")
        try partner.sql("SELECT pg_reload_conf()")
        try waitUntil("the partner to stop streaming", timeout: 30) {
            (try partner.sql("SELECT count(*) FROM pg_stat_wal_receiver") == "0", "")
        }

        // The DR site gets four more segments of timeline 1 that the partner never sees.
        for _ in 1...4 {
            try topology.primary.sql(
                "INSERT INTO admissions SELECT g, 'lost' FROM generate_series((SELECT max(id) + 1 FROM admissions), (SELECT max(id) + 100 FROM admissions)) g"
            )
            try topology.primary.sql("SELECT pg_switch_wal()")
        }
        try topology.primary.sql("INSERT INTO admissions VALUES (100000, 'lost')")
        let oldEnd = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        #expect(oldEnd / (16 << 20) >= partnerEnd / (16 << 20) + 4)
        try waitUntil("the DR site to hold timeline 1's end", timeout: 60) { (try topology.durable() >= oldEnd, "") }

        topology.primary.stopImmediately()
        try run(partner.bin + "/pg_ctl", ["-D", partner.dataDirectory, "-w", "promote"], asPostgres: true)
        try waitUntil("the partner to accept writes", timeout: 60) { (try partner.sql("SELECT pg_is_in_recovery()") == "f", "") }
        try partner.sql("INSERT INTO admissions SELECT g, 'after' FROM generate_series(2001, 2500) g")
        let afterFailover = try lsn(partner.sql("SELECT pg_current_wal_lsn()"))!
        try waitForTheSpoolOnTimeline2(topology, through: afterFailover)

        // No sender; the receiver restarts.
        topology.sender!.kill9()
        topology.receiver!.kill9()
        try topology.startReceiver()
        let reopened = try fetchStatus(port: topology.receiverStatusPort)
        let system = (reopened["systems"] as? [[String: Any]])?.first
        #expect(system?["timeline"] as? Int == 2, "\(reopened)")
        #expect((stageLSN(system, "durable") ?? 0) >= afterFailover)
        let identify = try run(
            topology.primary.bin + "/psql",
            [
                "host=127.0.0.1 port=\(standbyPort) user=postgres replication=true", "-XAtc", "IDENTIFY_SYSTEM",
            ], asPostgres: true)
        #expect(identify.output.split(separator: "|").dropFirst().first == "2", "\(identify.output)\(identify.error)")

        // The DR standby starts now, from the spool's endpoint alone, and the sender returns.
        let drStandby = try startDRStandby(fixture, topology, standbyPort: standbyPort)
        try topology.startSender(source: multiHost)
        try partner.sql("INSERT INTO admissions SELECT g, 'later' FROM generate_series(3001, 3100) g")
        let later = try lsn(partner.sql("SELECT pg_current_wal_lsn()"))!
        try waitForTheSpoolOnTimeline2(topology, through: later)
        try waitUntil("the DR standby to replay timeline 2", timeout: 120) {
            let replayed = lsn(try drStandby.sql("SELECT pg_last_wal_replay_lsn()")) ?? 0
            return (replayed >= later, String(replayed, radix: 16))
        }
        let expected = try partner.sql("SELECT count(*), count(*) FILTER (WHERE site = 'lost') FROM admissions")
        #expect(expected == "1600|0")
        #expect(try drStandby.sql("SELECT count(*), count(*) FILTER (WHERE site = 'lost') FROM admissions") == expected)

        let copy = try recoverTheDRCopyFromTheSpool(fixture, topology)
        #expect(try copy.sql("SELECT count(*), count(*) FILTER (WHERE site = 'lost') FROM admissions") == expected)
    }

    /// A primary with hot standby, its local HA partner, and walship shipping from whichever of the two accepts
    /// writes to a receiver that serves standbys; base backups "dr" and "drstandby" taken while it ships (its
    /// slot holds the WAL they need).
    func shipWithALocalPartner(_ fixture: Fixture) throws -> (ShipTopology, Cluster, String, Int) {
        var topology = try ShipTopology(fixture, primarySettings: ["hot_standby": "on"], spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        let (partner, multiHost) = try startLocalPartner(fixture, topology)
        try topology.startSender(source: multiHost)
        try fixture.baseBackup(of: topology.primary, name: "dr")
        try fixture.baseBackup(of: topology.primary, name: "drstandby")
        return (topology, partner, multiHost, standbyPort)
    }

    /// The DR standby, from base backup "drstandby": streams from the receiver's endpoint, restore-wal besides.
    func startDRStandby(_ fixture: Fixture, _ topology: ShipTopology, standbyPort: Int) throws -> Cluster {
        try fixture.startCopy(
            name: "drstandby", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr'",
                "restore_command = '\(IT.walshipBinary) restore-wal --spool \(topology.spool) %f %p'",
                "recovery_target_timeline = 'latest'", "wal_retrieve_retry_interval = '1s'", "hot_standby = on",
            ])
    }

    /// Base backup "dr" recovered from the spool alone to the end of the newest timeline, then promoted.
    func recoverTheDRCopyFromTheSpool(_ fixture: Fixture, _ topology: ShipTopology) throws -> Cluster {
        let copy = try fixture.startCopy(
            name: "dr", signal: "recovery.signal",
            settings: [
                "restore_command = '\(IT.walshipBinary) restore-wal --spool \(topology.spool) %f %p'",
                "recovery_target_timeline = 'latest'", "recovery_target_action = 'promote'",
            ])
        try waitUntil("the DR copy to finish recovery", timeout: 120) { (try copy.sql("SELECT pg_is_in_recovery()") == "f", "") }
        return copy
    }

    /// The local HA partner, a native streaming standby of the primary, and a conninfo that finds whichever
    /// of the two accepts writes.
    func startLocalPartner(_ fixture: Fixture, _ topology: ShipTopology) throws -> (Cluster, String) {
        _ = try run(
            topology.primary.bin + "/pg_basebackup",
            [
                "-h", "127.0.0.1", "-p", "\(topology.primary.port)", "-U", "postgres",
                "-D", fixture.directory + "/local", "-X", "stream", "-R", "-c", "fast",
                "--no-sync",
            ], asPostgres: true)
        let partner = try fixture.startCopy(name: "local", signal: "standby.signal", settings: ["hot_standby = on"])
        return (
            partner,
            "host=127.0.0.1,127.0.0.1 port=\(topology.primary.port),\(partner.port) user=postgres target_session_attrs=read-write"
        )
    }

    func waitForPartnerAndDRSite(_ partner: Cluster, _ topology: ShipTopology, through end: UInt64) throws {
        try waitUntil("the partner and the DR site to have everything", timeout: 60) {
            let replayed = lsn(try partner.sql("SELECT pg_last_wal_replay_lsn()")) ?? 0
            let durable = try topology.durable()
            return (replayed >= end && durable >= end, "")
        }
    }

    func waitForTheSpoolOnTimeline2(_ topology: ShipTopology, through end: UInt64) throws {
        try waitUntil("the spool to follow timeline 2", timeout: 120) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let system = (status["systems"] as? [[String: Any]])?.first
            let timeline = system?["timeline"] as? Int ?? 0
            let durable = stageLSN(system, "durable") ?? 0
            return (
                timeline == 2 && durable >= end,
                "timeline \(timeline), durable \(String(durable, radix: 16)); sender: \(topology.sender!.log.suffix(1500))"
            )
        }
    }
}
