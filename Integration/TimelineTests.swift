import Foundation
import Testing

/// A failover at the primary site: the sender follows the promoted local standby to timeline 2.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct TimelineTests {
    @Test func senderFollowsALocalFailoverToTheNewTimeline() throws {
        let fixture = try Fixture("timeline-follow")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["hot_standby": "on"], spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()

        // The local HA partner: a native streaming standby of the primary.
        let local = fixture.directory + "/local"
        try run(topology.primary.bin + "/pg_basebackup", ["-h", "127.0.0.1", "-p", "\(topology.primary.port)", "-U", "postgres",
                                                          "-D", local, "-X", "stream", "-R", "-c", "fast", "--no-sync"], asPostgres: true)
        let partner = try fixture.startCopy(name: "local", signal: "standby.signal", settings: ["hot_standby = on"])
        let multiHost = "host=127.0.0.1,127.0.0.1 port=\(topology.primary.port),\(partner.port) user=postgres target_session_attrs=read-write"
        try topology.startSender(source: multiHost)
        // Taken while walship ships (its slot holds the WAL): the DR copy's starting point, restored later from
        // the spool alone, and a continuously replaying DR standby.
        try fixture.baseBackup(of: topology.primary, name: "dr")
        try fixture.baseBackup(of: topology.primary, name: "drstandby")
        let drStandby = try fixture.startCopy(name: "drstandby", signal: "standby.signal", settings: [
            "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr'",
            "restore_command = '\(IT.walshipBinary) restore-wal --spool \(topology.spool) %f %p'",
            "recovery_target_timeline = 'latest'", "wal_retrieve_retry_interval = '1s'", "hot_standby = on",
        ])
        try topology.primary.sql("CREATE TABLE admissions (id int PRIMARY KEY, site text)")
        try topology.primary.sql("INSERT INTO admissions SELECT g, 'before' FROM generate_series(1, 1000) g")
        let beforeFailover = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the partner and the DR site to have everything", timeout: 60) {
            let replayed = lsn(try partner.sql("SELECT pg_last_wal_replay_lsn()")) ?? 0
            let durable = try topology.durable()
            return (replayed >= beforeFailover && durable >= beforeFailover, "")
        }

        topology.primary.stopImmediately()
        try run(partner.bin + "/pg_ctl", ["-D", partner.dataDirectory, "-w", "promote"], asPostgres: true)
        try waitUntil("the partner to accept writes", timeout: 60) { (try partner.sql("SELECT pg_is_in_recovery()") == "f", "") }
        try partner.sql("INSERT INTO admissions SELECT g, 'after' FROM generate_series(1001, 1500) g")
        let afterFailover = try lsn(partner.sql("SELECT pg_current_wal_lsn()"))!

        try waitUntil("the spool to follow timeline 2", timeout: 120) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let system = (status["systems"] as? [[String: Any]])?.first
            let timeline = system?["timeline"] as? Int ?? 0
            let durable = stageLSN(system, "durable") ?? 0
            return (timeline == 2 && durable >= afterFailover, "timeline \(timeline), durable \(String(durable, radix: 16)); sender: \(topology.sender!.log.suffix(600))")
        }
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
        #expect(receiverLog.contains("standby reached the end of its timeline"),
                "\(receiverLog.split(separator: "\n").filter { $0.contains("standby") }.suffix(20).joined(separator: "\n"))")
        #expect(try drStandby.sql("SELECT pg_is_in_recovery()") == "t")

        // A copy recovered from the spool alone follows timeline 2 and has every row.
        let copy = try fixture.startCopy(name: "dr", signal: "recovery.signal", settings: [
            "restore_command = '\(IT.walshipBinary) restore-wal --spool \(topology.spool) %f %p'",
            "recovery_target_timeline = 'latest'", "recovery_target_action = 'promote'",
        ])
        try waitUntil("the DR copy to finish recovery", timeout: 120) { (try copy.sql("SELECT pg_is_in_recovery()") == "f", "") }
        #expect(try copy.sql("SELECT count(*), count(*) FILTER (WHERE site = 'after') FROM admissions") == "1500|500")
        #expect(try copy.sql("SELECT timeline_id FROM pg_control_checkpoint()") != "1")
    }
}
