import Foundation
import Testing

/// The promotion interlock with a real primary and DR standby: `walship promote` refuses while the old primary may
/// be alive (its sender linked, a crash-restart, a freeze shorter than the link timeout), changes nothing with
/// `--dry-run`, and goes ahead as soon as the sender reports the primary lost.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct InterlockTests {
    static let linkTimeout = 8.0

    @Test func promotionWaitsUntilThePrimaryIsLost() throws {
        let fixture = try Fixture("interlock")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'walship'"], spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver(linkTimeout: Int(Self.linkTimeout))
        try topology.startSender(extra: ["--sync"])
        try topology.primary.sql("CREATE TABLE marks (id int PRIMARY KEY)")
        try topology.takeBackup()
        let standby = try topology.startDRStandby(standbyPort: standbyPort)
        try topology.primary.sql("INSERT INTO marks VALUES (1)")
        try waitUntil("the DR standby to replay the first mark", timeout: 60) {
            let count = (try? standby.sql("SELECT count(*) FROM marks")) ?? ""
            return (count == "1", count)
        }
        let systemDirectory = topology.spool + "/" + topology.systemIdentifier
        let fence = systemDirectory + "/FENCED"
        func promote(_ extra: [String]) throws -> CommandResult {
            try run(
                IT.walshipBinary, ["promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool] + extra,
                timeout: 120, check: false)
        }
        /// Files a promotion could leave: the fence, reports in the spool's system directory or here.
        func leftovers() throws -> [String] {
            let here = try FileManager.default.contentsOfDirectory(atPath: FileManager.default.currentDirectoryPath)
            let spool = try FileManager.default.contentsOfDirectory(atPath: systemDirectory)
            return (here + spool).filter { $0 == "FENCED" || $0.hasPrefix("walship-promote-") }.sorted()
        }
        func expectUnchanged(_ context: String) throws {
            #expect(try standby.sql("SELECT pg_is_in_recovery()") == "t", "\(context): the standby must still recover")
            #expect(!FileManager.default.fileExists(atPath: fence), "\(context): no fence may be written")
            let left = try leftovers()
            #expect(left.filter { $0 != "FENCED" }.isEmpty, "\(context): \(left)")
        }
        let before = try leftovers()
        #expect(before.isEmpty, "\(before)")

        // 1. The primary is up and its sender linked: refused, and the dry run says it would refuse.
        let linked = try promote(["--report", fixture.logDirectory + "/refused-linked"])
        #expect(linked.status == 1, "\(linked.output)\(linked.error)")
        #expect(linked.error.contains("the old primary may still be alive"), "\(linked.error)")
        #expect(linked.error.contains("(sender linked)") && linked.error.contains("--force if you are sure"), "\(linked.error)")
        try expectUnchanged("refused while linked")
        let dryLinked = try promote(["--dry-run"])
        #expect(dryLinked.status == 1 && dryLinked.output.contains("dry run: would refuse"), "\(dryLinked.output)")
        try expectUnchanged("dry run while linked")
        let statusLine = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.receiverStatusPort)"], check: false)
        #expect(statusLine.output.contains("promotion not ready: the primary was heard at"), "\(statusLine.output)")

        // 2. A crash-restart (a backend killed with -9: the postmaster restarts them all) is not a lost primary.
        let checkpointer = try #require(
            Int32(try topology.primary.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")))
        kill(checkpointer, SIGKILL)
        let crashedAt = Date()
        var verdicts: Set<String> = []
        while Date().timeIntervalSince(crashedAt) < Self.linkTimeout + 2 {
            let readiness = try promotionReadiness(statusPort: topology.receiverStatusPort)
            #expect(readiness?["ready"] as? Bool == false, "a crash-restart made the primary look lost: \(readiness ?? [:])")
            if let verdict = (readiness?["senderVerdict"] as? [String: Any])?["state"] as? String { verdicts.insert(verdict) }
            usleep(200_000)
        }
        #expect(topology.sender!.log.contains("streaming stopped"), "the crash must have cut the replication connection")
        try topology.waitUntilStreaming()
        print("crash-restart: the sender's verdicts seen at the receiver: \(verdicts.sorted())")

        // 3. Primary and sender frozen together: nobody can say the primary is lost, so silence decides.
        let frozen = try primaryProcesses(topology.primary) + [topology.sender!.child.pid]
        for pid in frozen { kill(pid, SIGSTOP) }
        let frozenAt = Date()
        defer { for pid in frozen { kill(pid, SIGCONT) } }
        let whileFrozen = try promote(["--report", fixture.logDirectory + "/refused-frozen"])
        #expect(
            whileFrozen.status == 1 && whileFrozen.error.contains("the old primary may still be alive"), "\(whileFrozen.error)")
        try expectUnchanged("refused while frozen")
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: Self.linkTimeout + 15)
        let silentFor = Date().timeIntervalSince(frozenAt)
        #expect(silentFor >= Self.linkTimeout - 1.5, "ready after \(silentFor) s of silence, before --link-timeout")
        let dryReport = fixture.logDirectory + "/dry-frozen"
        let dryFrozen = try promote(["--dry-run", "--report", dryReport])
        #expect(
            dryFrozen.status == 0 && dryFrozen.output.contains("dry run: would promote"), "\(dryFrozen.output)\(dryFrozen.error)")
        #expect(dryFrozen.output.contains("RPO"), "\(dryFrozen.output)")
        #expect(
            FileManager.default.fileExists(atPath: dryReport + ".json")
                && FileManager.default.fileExists(atPath: dryReport + ".md"))
        try expectUnchanged("dry run while frozen")
        for pid in frozen { kill(pid, SIGCONT) }
        try topology.waitUntilStreaming()
        try waitUntil("the readiness to be withdrawn once the sender streams again", timeout: 30) {
            let readiness = try promotionReadiness(statusPort: topology.receiverStatusPort)
            return (readiness?["ready"] as? Bool == false, "\(readiness ?? [:])")
        }

        // 4. The primary dies (-9 of the postmaster) while its sender runs: ready within the sender's 2 s, long
        // before --link-timeout, and the promotion goes ahead.
        try topology.primary.sql("INSERT INTO marks VALUES (2)")
        kill(try postmasterPID(of: topology.primary), SIGKILL)
        let killedAt = Date()
        let line = try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 20)
        let took = Date().timeIntervalSince(killedAt)
        print(
            String(format: "primary killed: walship status said ready after %.1f s (link timeout %.0f s)", took, Self.linkTimeout)
        )
        #expect(line.contains("the sender reports the primary lost"), "\(line)")
        #expect(took < Self.linkTimeout - 1, "ready only after \(took) s: the link timeout, not the sender's verdict")
        let dryLost = try promote(["--dry-run"])
        #expect(dryLost.status == 0 && dryLost.output.contains("would promote"), "\(dryLost.output)\(dryLost.error)")
        try expectUnchanged("dry run once lost")
        let promoted = try promote(["--report", fixture.logDirectory + "/promotion", "--timeout", "60"])
        #expect(promoted.status == 0, "\(promoted.output)\(promoted.error)")
        #expect(promoted.output.contains("promotion ready: the sender reports the primary lost"), "\(promoted.output)")
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "f")
        #expect(try standby.sql("SELECT count(*) FROM marks") == "2")
        #expect(FileManager.default.fileExists(atPath: fence))
        topology.sender!.kill9()
    }

    /// The postmaster and its children: freezing the postmaster alone would leave the walsender streaming.
    func primaryProcesses(_ cluster: Cluster) throws -> [Int32] {
        let postmaster = try postmasterPID(of: cluster)
        var pids = [postmaster]
        for entry in try FileManager.default.contentsOfDirectory(atPath: "/proc") {
            guard let pid = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, Int32(fields[1]) == postmaster { pids.append(pid) }
        }
        return pids
    }
}
