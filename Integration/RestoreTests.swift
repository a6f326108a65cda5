import Foundation
import Testing

/// A stock PostgreSQL 15 recovers from the spool through `restore_command = 'walship restore-wal ...'`.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct RestoreTests {
    @Test func archiveRecoveryFromTheSpoolReplaysEveryCommittedRow() throws {
        let fixture = try Fixture("restore-wal")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        try topology.startReceiver()
        try topology.startSender()

        // The base backup is taken while walship ships; the copy will find all later WAL only in the spool.
        try fixture.baseBackup(of: topology.primary, name: "recovered")
        try topology.primary.sql("CREATE TABLE records (id int PRIMARY KEY, note text)")
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        for batch in 0..<5 {
            try topology.primary.sql(
                "INSERT INTO records SELECT g, md5(g::text) FROM generate_series(\(batch * 1000 + 1), \((batch + 1) * 1000)) g")
        }
        let expected = try topology.primary.sql("SELECT count(*), sum(hashtext(note)) FROM records")
        let accounts = try topology.primary.sql("SELECT sum(abalance), count(*) FROM pgbench_accounts")
        let end = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("everything to be durable at the receiver", timeout: 60) {
            let d = try topology.durable()
            return (d >= end, String(d, radix: 16))
        }
        // Disaster: the primary is gone. The last rows are only in the spool's in-progress segment.
        topology.primary.stopImmediately()

        let recovered = try fixture.startCopy(
            name: "recovered", signal: "recovery.signal",
            settings: [
                "restore_command = '\(IT.walshipBinary) restore-wal --spool \(topology.spool) %f %p'",
                "recovery_target_action = 'promote'",
            ])
        try waitUntil("recovery to finish and the copy to accept writes", timeout: 120) {
            let inRecovery = try recovered.sql("SELECT pg_is_in_recovery()")
            return (inRecovery == "f", inRecovery)
        }
        #expect(try recovered.sql("SELECT count(*), sum(hashtext(note)) FROM records") == expected)
        #expect(try recovered.sql("SELECT sum(abalance), count(*) FROM pgbench_accounts") == accounts)
        try recovered.sql("INSERT INTO records VALUES (-1, 'after recovery')")
        #expect(try recovered.sql("SELECT note FROM records WHERE id = -1") == "after recovery")
    }

    /// A standby fed by restore_command alone asks for the in-progress segment again at every retry. What it
    /// already holds is not written again, the zeros after the WAL are never written, and new WAL still arrives.
    @Test func anArchiveFedStandbyIsNotRewrittenWhileNothingNewArrives() throws {
        let fixture = try Fixture("restore-wal-standby")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        try topology.startReceiver()
        try topology.startSender()
        try fixture.baseBackup(of: topology.primary, name: "standby")
        try topology.primary.sql("CREATE TABLE fed (id int PRIMARY KEY)")
        try topology.primary.sql("INSERT INTO fed SELECT generate_series(1, 1000)")
        let end = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        let tail = try topology.primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        try waitUntil("the rows to be durable at the receiver", timeout: 60) {
            let d = try topology.durable()
            return (d >= end, String(d, radix: 16))
        }
        let calls = try fixture.postgresDirectory("calls") + "/restore_command"
        let standby = try fixture.startCopy(
            name: "standby", signal: "standby.signal",
            settings: [
                "restore_command = 'echo %f >> \(calls); \(IT.walshipBinary) restore-wal --spool \(topology.spool) %f %p'",
                "wal_retrieve_retry_interval = '100ms'", "hot_standby = on",
            ])
        try waitUntil("the standby to replay the rows from the spool", timeout: 120) {
            let replayed = try standby.sql("SELECT pg_last_wal_replay_lsn()")
            return ((lsn(replayed) ?? 0) >= end, replayed)
        }
        // PostgreSQL keeps what restore_command gave it under the segment's name in pg_wal.
        let kept = standby.dataDirectory + "/pg_wal/" + tail
        var first = stat()
        #expect(stat(kept, &first) == 0, "\(kept) is missing")
        #expect(Int(first.st_size) == 16 << 20)
        #expect(Int(first.st_blocks) * 512 < 8 << 20, "the zero tail takes disk blocks: \(Int(first.st_blocks) * 512) bytes")
        func requests() -> Int {
            ((try? String(contentsOfFile: calls, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0 == tail }.count
        }
        let before = requests()
        try waitUntil("the standby to ask for \(tail) three more times", timeout: 60) {
            (requests() >= before + 3, "\(requests() - before) more requests")
        }
        var now = stat()
        #expect(stat(kept, &now) == 0)
        #expect(
            now.st_ino == first.st_ino && now.st_mtim.tv_sec == first.st_mtim.tv_sec
                && now.st_mtim.tv_nsec == first.st_mtim.tv_nsec, "\(tail) was written again with nothing new in it")

        // New WAL in the same segment is served at the next retry.
        try topology.primary.sql("INSERT INTO fed SELECT generate_series(1001, 1500)")
        let later = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the new rows to be durable at the receiver", timeout: 60) {
            let d = try topology.durable()
            return (d >= later, String(d, radix: 16))
        }
        try waitUntil("the standby to replay the new rows", timeout: 60) {
            let count = try standby.sql("SELECT count(*) FROM fed")
            return (count == "1500", count)
        }
    }

    @Test func restoreWALExitCodes() throws {
        let fixture = try Fixture("restore-wal-codes")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        try topology.startReceiver()
        try topology.startSender()
        let name = try topology.switchAndWait()
        let target = fixture.directory + "/restored"
        let ok = try run(IT.walshipBinary, ["restore-wal", "--spool", topology.spool, name, target], check: false)
        #expect(ok.status == 0)
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: target))
                == Data(contentsOf: URL(fileURLWithPath: topology.archive + "/" + name)))
        let absent = try run(
            IT.walshipBinary, ["restore-wal", "--spool", topology.spool, "0000000100000000000000FF", target + "2"], check: false)
        #expect(absent.status == 1)
        #expect(absent.error.isEmpty && absent.output.isEmpty)
        let broken = try run(
            IT.walshipBinary, ["restore-wal", "--spool", fixture.directory + "/nothing", name, target + "3"], check: false)
        #expect(broken.status == 126)
        #expect(broken.error.contains("restore-wal: error"))

        // extract-partial writes the WAL of the segment in progress (a journal) as a segment pg_waldump reads.
        try topology.primary.sql("CREATE TABLE aside_probe AS SELECT g FROM generate_series(1, 1000) g")
        let written = lsn(try topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the probe's WAL to be durable in the spool") {
            let durable = try topology.durable()
            return (durable >= written, "durable \(String(durable, radix: 16)), waiting for \(String(written, radix: 16))")
        }
        let journal = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
            .filter { $0.hasSuffix(".partial") }.map { String($0.dropLast(8)) }.max()!
        try FileManager.default.createDirectory(atPath: fixture.directory + "/aside", withIntermediateDirectories: true)
        let extracted = fixture.directory + "/aside/" + journal
        let extract = try run(IT.walshipBinary, ["extract-partial", "--spool", topology.spool, journal + ".partial", extracted])
        #expect(extract.output.contains("wrote \(extracted): WAL of timeline 1 from "), "\(extract.output)")
        #expect(try FileManager.default.attributesOfItem(atPath: extracted)[.size] as? Int == 16 << 20)
        let dump = try run(topology.primary.bin + "/pg_waldump", ["-n", "3", extracted], check: false)
        #expect(dump.status == 0 && dump.output.contains("rmgr:"), "pg_waldump: \(dump.output) \(dump.error)")
        let again = try run(IT.walshipBinary, ["extract-partial", "--spool", topology.spool, journal, extracted], check: false)
        #expect(again.status != 0 && again.error.contains("exists"), "\(again.error)")
        let none = try run(IT.walshipBinary, ["extract-partial", "--spool", topology.spool, name, extracted + "2"], check: false)
        #expect(none.status != 0 && none.error.contains("no journal \(name).partial"), "\(none.error)")
    }
}
