import Foundation
import Testing

/// Faults a DR site meets, in synchronous mode, under load from 8 sessions that record every commit the primary
/// acknowledged (hundreds a second, so commits are in flight when a fault lands): kill -9 of the sender, the
/// receiver, the DR standby and the primary; a link cut, stalled (no bytes, no FIN) and slowed through a TCP
/// proxy; the spool's storage failing (a journal's fdatasync fails with EIO; the disk is full for a while),
/// injected by the test build's `StorageFaultFileSystem`. After each fault the stream must resume by itself (after
/// the failed fsync, once the receiver is restarted, as a DBA would); at the end the primary dies, the DR replica
/// is promoted and every acknowledged id must be there.
/// `make test` runs one round of each fault; `make drills ROUNDS=N` runs N rounds and prints the table.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct FaultDrillTests {
    enum Fault: String, CaseIterable {
        case killSender = "kill -9 sender"
        case killReceiver = "kill -9 receiver"
        case killStandby = "kill -9 DR standby"
        case killPrimary = "kill -9 primary (restarted)"
        case cutLink = "link cut"
        case stallLink = "link stalled"
        case slowLink = "link slowed (300 ms)"
        case journalSyncFailure = "journal fdatasync EIO"
        case spoolDiskFull = "spool disk full (ENOSPC)"
    }

    struct Tally {
        var rounds = 0
        var maxResume = 0.0
    }

    @Test func everyAcknowledgedCommitSurvivesTheFaults() throws {
        let rounds = Int(ProcessInfo.processInfo.environment["WALSHIP_DRILL_ROUNDS"] ?? "") ?? 1
        let seed = UInt64(ProcessInfo.processInfo.environment["WALSHIP_DRILL_SEED"] ?? "") ?? UInt64.random(in: 1...999_999)
        print("fault drills: \(rounds) round(s), seed \(seed) (WALSHIP_DRILL_SEED=\(seed) repeats this order)")
        var random = SeededGenerator(seed: seed)

        let fixture = try Fixture("fault-drills")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'walship'", "wal_sender_timeout": "'5s'"])
        let standbyPort = IT.freePort()
        let proxyPort = IT.freePort()
        let control = fixture.directory + "/proxy-mode"
        try "pass".write(toFile: control, atomically: true, encoding: .utf8)
        _ = try fixture.daemon(
            "proxy", "/usr/bin/python3",
            [
                IT.repositoryRoot + "/scripts/fault-proxy.py", "\(proxyPort)",
                "\(topology.receiverPort)", control,
            ])
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        topology.senderTargetPort = proxyPort
        let storageFaults = fixture.directory + "/storage-faults"
        try "".write(toFile: storageFaults, atomically: true, encoding: .utf8)
        topology.receiverEnvironment = ["WALSHIP_TEST_STORAGE_FAULTS": storageFaults]
        try topology.startReceiver(linkTimeout: 5)
        try topology.startSender(extra: ["--sync", "--link-timeout", "5"])
        var standby = try startDRStandby(fixture, topology, port: standbyPort)
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        let ackedFile = fixture.directory + "/acked.txt"
        let writer = try startAcknowledgedLoad(fixture, primary: topology.primary, table: "acknowledged", file: ackedFile)
        let loadStarted = Date()

        /// Waits until `more` commits beyond those acknowledged so far (more than the 8 that may have been in flight at
        /// the fault); returns the seconds it took.
        func resumed(after fault: Fault, more: Int = 50) throws -> Double {
            try waitForMoreCommits(more, in: ackedFile, "commits to resume after \(fault.rawValue)", timeout: 90) {
                "sender: \(topology.sender!.log.suffix(300))"
            }
        }
        _ = try resumed(after: .cutLink, more: 10)
        let steadyCount = acknowledgedCount(ackedFile)
        usleep(5_000_000)
        let steadyRate = Double(acknowledgedCount(ackedFile) - steadyCount) / 5
        print(String(format: "fault drills: %.0f acknowledged commits/s from 8 sessions before the faults", steadyRate))

        /// Expects no commit to be acknowledged for `seconds` (but those already in flight, one per session).
        func expectCommitsWait(_ seconds: Double, during fault: Fault) {
            let before = acknowledgedCount(ackedFile)
            usleep(UInt32(seconds * 1_000_000))
            let after = acknowledgedCount(ackedFile)
            #expect(after <= before + 8, "\(after - before) commits acknowledged during \(fault.rawValue)")
        }
        func receiverSystem() throws -> [String: Any] {
            let systems = try fetchStatus(port: topology.receiverStatusPort)["systems"] as? [[String: Any]] ?? []
            return systems.first { $0["systemIdentifier"] as? String == topology.systemIdentifier } ?? [:]
        }

        var tally: [Fault: Tally] = [:]
        for _ in 0..<rounds {
            for fault in Fault.allCases.shuffled(using: &random) {
                switch fault {
                case .killSender:
                    topology.sender!.kill9()
                    topology.sender = try fixture.walship("sender", topology.senderArguments)
                case .killReceiver:
                    topology.receiver!.kill9()
                    try topology.startReceiver(linkTimeout: 5)
                case .killStandby:
                    kill(try postmasterPID(standby), SIGKILL)
                    standby = try restart(standby, fixture: fixture)
                case .killPrimary:
                    // The writer's sessions reconnect by themselves; ids in flight at the crash are not used again.
                    kill(try postmasterPID(topology.primary), SIGKILL)
                    try waitUntil("the primary to restart after its crash", timeout: 60) {
                        do {
                            try topology.primary.start()
                            return (true, "")
                        } catch { return (false, "\(error)") }
                    }
                case .cutLink:
                    try "cut".write(toFile: control, atomically: true, encoding: .utf8)
                case .stallLink:
                    try "stall".write(toFile: control, atomically: true, encoding: .utf8)
                    usleep(8_000_000)
                    try "pass".write(toFile: control, atomically: true, encoding: .utf8)
                case .slowLink:
                    try "delay:300".write(toFile: control, atomically: true, encoding: .utf8)
                    usleep(3_000_000)
                    try "pass".write(toFile: control, atomically: true, encoding: .utf8)
                case .journalSyncFailure:
                    // The spool stops acknowledging for good and says so; a DBA checks the disk and restarts the receiver.
                    try "fdatasync EIO 1 .partial\n".write(toFile: storageFaults, atomically: true, encoding: .utf8)
                    try waitUntil("the receiver to report the failed fsync", timeout: 30) {
                        let system = try receiverSystem()
                        return (system["spoolFailure"] != nil, "\(system)\n\(topology.receiver!.log.suffix(600))")
                    }
                    expectCommitsWait(2, during: fault)
                    #expect(try receiverSystem()["spoolFailure"] != nil, "the spool failure went away without a restart")
                    try "".write(toFile: storageFaults, atomically: true, encoding: .utf8)
                    topology.receiver!.kill9()
                    try topology.startReceiver(linkTimeout: 5)
                case .spoolDiskFull:
                    // Every write fails until the file is rewritten: commits wait, then resume by themselves.
                    let logBefore = topology.receiver!.log.utf8.count
                    try "write ENOSPC 100000000\n".write(toFile: storageFaults, atomically: true, encoding: .utf8)
                    try waitUntil("the receiver to meet the full disk", timeout: 30) {
                        let log = String(decoding: topology.receiver!.log.utf8.dropFirst(logBefore), as: UTF8.self)
                        return (log.contains("injected write error \(ENOSPC)"), log.suffix(600).description)
                    }
                    expectCommitsWait(3, during: fault)
                    try "".write(toFile: storageFaults, atomically: true, encoding: .utf8)
                }
                let seconds = try resumed(after: fault)
                tally[fault, default: Tally()].rounds += 1
                tally[fault, default: Tally()].maxResume = max(tally[fault]!.maxResume, seconds)
            }
        }

        // The disaster at the end: the primary dies for good; the DR replica is promoted.
        kill(try postmasterPID(topology.primary), SIGKILL)
        usleep(300_000)
        writer.kill9()
        let loadSeconds = Date().timeIntervalSince(loadStarted)
        let acked = Set(acknowledgedIDs(ackedFile))
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool,
                "--report", fixture.logDirectory + "/promotion",
            ], timeout: 200, check: false)
        #expect(promote.status == 0, "\(promote.output)\(promote.error)")
        let present = Set(try standby.sql("SELECT id FROM acknowledged").split(separator: "\n").compactMap { Int($0) })
        let lost = acked.subtracting(present)
        print("fault                          rounds  acknowledged  lost  max resume (s)")
        for fault in Fault.allCases {
            let t = tally[fault] ?? Tally()
            print(
                fault.rawValue.padding(toLength: 31, withPad: " ", startingAt: 0)
                    + String(format: "%6d  %12d  %4d  %14.1f", t.rounds, acked.count, lost.count, t.maxResume))
        }
        print(
            String(
                format: "fault drills: %d commits acknowledged in %.0f s, %.0f/s through the faults, %.0f/s before them",
                acked.count, loadSeconds, Double(acked.count) / loadSeconds, steadyRate))
        #expect(
            lost.isEmpty, "acknowledged commits missing on the promoted DR replica: \(lost.sorted().prefix(20)) (seed \(seed))")
        #expect(acked.count > 50)
    }

    /// The spool on a small tmpfs fills up under synchronous load: the receiver stops acknowledging (commits
    /// wait), says so and alerts; once space returns it resumes by itself, and the spool holds every
    /// segment intact.
    /// The same with `--spool-max-bytes` instead of a small filesystem: a spool that shares a disk with other
    /// data. It is also the fallback where a tmpfs cannot be mounted.
    @Test(arguments: ["tmpfs", "quota"])
    func aFullSpoolStopsAcknowledgingAndResumesWhenSpaceReturns(_ limit: String) throws {
        let fixture = try Fixture("fault-disk-full-\(limit)")
        let spool = fixture.directory + "/spool"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        var useQuota = limit == "quota"
        var mountedTmpfs = false
        if !useQuota {
            let mounted = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=128m", "tmpfs", spool], check: false)
            mountedTmpfs = mounted.status == 0
            if !mountedTmpfs {
                print(
                    "disk-full drill: mounting a 128 MB tmpfs was refused (\(mounted.error.trimmingCharacters(in: .whitespacesAndNewlines))); falling back to --spool-max-bytes 160M"
                )
                useQuota = true
            }
        }
        defer {
            fixture.tearDown()
            if mountedTmpfs { _ = try? run("/bin/umount", ["-l", spool], check: false) }
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        let filler = spool + "/filler"
        _ = try run("/usr/bin/fallocate", ["-l", "100M", filler])

        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_standby_names": "'walship'"])
        let alerts = fixture.directory + "/alerts.jsonl"
        topology.receiverExtra =
            [
                "--alert-spool-free-percent", "30", "--alert-recovery-seconds", "1",
                "--alert-command", "cat >> \(alerts); echo >> \(alerts)",
            ]
            // The quota keeps room for a journal and its compressed copy: 160M leaves about what the 128 MB tmpfs does.
            + (useQuota ? ["--spool-max-bytes", "160M"] : [])
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync"])
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        let ackedFile = fixture.directory + "/acked.txt"
        _ = try startAcknowledgedWriter(fixture, primary: topology.primary, table: "acknowledged", file: ackedFile)
        // Random bytes: WAL that LZ4 cannot shrink, about 60 MB of it.
        try topology.primary.sql("CREATE EXTENSION pgcrypto")
        let load = try fixture.daemon(
            "load", "/usr/bin/psql",
            [
                "-h", "127.0.0.1", "-p", "\(topology.primary.port)", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                "-c",
                "CREATE TABLE blobs AS SELECT g, gen_random_bytes(1000) AS b FROM generate_series(1, 60000) g",
            ])

        try waitUntil("the spool to fill up", timeout: 180) {
            let log = topology.receiver!.log
            return (log.contains(useQuota ? "reached its quota" : "No space left"), log.suffix(600).description)
        }
        try waitUntil("the spool_free alert", timeout: 30) {
            let text = (try? String(contentsOfFile: alerts, encoding: .utf8)) ?? ""
            return (text.contains(#""condition":"spool_free""#) && text.contains(#""event":"firing""#), text)
        }
        // Nothing more is acknowledged while the disk is full: synchronous commits wait.
        let stalled = acknowledgedCount(ackedFile)
        usleep(3_000_000)
        #expect(acknowledgedCount(ackedFile) <= stalled + 1, "commits were acknowledged with a full spool")

        // Space returns; everything resumes by itself.
        try FileManager.default.removeItem(atPath: filler)
        try waitUntil("the load to finish once space returned", timeout: 300) {
            (!load.isRunning, load.log.suffix(300).description)
        }
        #expect(load.exitStatus == 0, "\(load.log)")
        try waitUntil("commits to flow again", timeout: 60) { (acknowledgedCount(ackedFile) > stalled + 5, "") }
        let last = try topology.switchAndWait()
        #expect(try topology.verifySpool(through: last) >= 3)
        try waitUntil("the spool_free alert to recover", timeout: 30) {
            let text = (try? String(contentsOfFile: alerts, encoding: .utf8)) ?? ""
            return (text.contains(#""event":"resolved""#), text)
        }
    }

    /// `--on-receiver-loss degrade-after`: with the DR site gone, commits wait only the allowed time, then are
    /// acknowledged from the sender's local buffer with the RPO exposure shown and alerted. When the receiver
    /// returns the buffer is shipped (byte-identical to the primary's archive) and acknowledgement is synchronous
    /// again. In a disaster while degraded, what is lost is bounded by the exposure reported at that moment.
    @Test func degradeAfterKeepsCommittingAndTheLossStaysWithinTheReportedExposure() throws {
        let fixture = try Fixture("fault-degrade")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'walship'", "wal_sender_timeout": "'5s'"])
        let standbyPort = IT.freePort()
        let buffer = fixture.directory + "/buffer"
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver(linkTimeout: 5)
        try topology.startSender(extra: [
            "--sync", "--link-timeout", "5", "--on-receiver-loss", "degrade-after=3s",
            "--buffer-dir", buffer, "--alert-recovery-seconds", "1",
        ])
        let standby = try startDRStandby(fixture, topology, port: standbyPort)
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        let ackedFile = fixture.directory + "/acked.txt"
        let writer = try startAcknowledgedWriter(fixture, primary: topology.primary, table: "acknowledged", file: ackedFile)
        func commits(_ more: Int, _ what: String, timeout: Double = 60) throws {
            try waitForMoreCommits(more, in: ackedFile, "\(more) commits \(what)", timeout: timeout) {
                "sender: \(topology.sender!.log.suffix(600))"
            }
        }
        func sender() throws -> [String: Any] { try fetchStatus(port: topology.senderStatusPort) }
        func details(_ status: [String: Any]) -> [String: Any] { status["sender"] as? [String: Any] ?? [:] }
        func firing(_ status: [String: Any]) -> [String] {
            (status["alerts"] as? [[String: Any]] ?? []).compactMap { $0["condition"] as? String }
        }
        try commits(10, "in synchronous mode")
        #expect(details(try sender())["degraded"] as? Bool == false)
        #expect(details(try sender())["receiverLossPolicy"] as? String == "degrade-after=3s")

        // The DR site goes away: commits stop for about the allowed time, then continue, degraded.
        topology.receiver!.kill9()
        try commits(20, "acknowledged from the local buffer", timeout: 60)
        let degraded = try sender()
        let exposure = try #require(details(degraded)["rpoExposure"] as? [String: Any], "\(degraded)")
        #expect((exposure["bytes"] as? Int ?? 0) > 0)
        #expect(details(degraded)["degraded"] as? Bool == true)
        try waitUntil("the rpo_exposure alert", timeout: 30) {
            let status = try sender()
            return (firing(status).contains("rpo_exposure"), "\(status["alerts"] ?? "")")
        }
        let audit = try String(contentsOfFile: buffer + "/audit.log", encoding: .utf8)
        #expect(audit.contains(#""event":"degraded""#), "\(audit)")
        #expect(topology.sender!.log.contains("acknowledging commits from the local buffer"))

        // It returns: the buffer is shipped and acknowledgement is synchronous again, by itself.
        try topology.startReceiver(linkTimeout: 5)
        try waitUntil("synchronous acknowledgement again", timeout: 90) {
            let status = try sender()
            let d = details(status)
            return (
                d["degraded"] as? Bool == false && d["rpoExposure"] == nil && !firing(status).contains("rpo_exposure"),
                "\(d)\n\(topology.sender!.log.suffix(1500))"
            )
        }
        #expect(try String(contentsOfFile: buffer + "/audit.log", encoding: .utf8).contains(#""event":"synchronous""#))
        #expect(!FileManager.default.fileExists(atPath: buffer + "/" + topology.systemIdentifier))
        try commits(5, "after returning to synchronous mode")
        let shippedFromBuffer = Set(acknowledgedIDs(ackedFile))
        // The WAL shipped from the buffer is the primary's, byte for byte, without a gap.
        let last = try topology.switchAndWait()
        #expect(try topology.verifySpool(through: last) >= 2)

        // A second outage, and this time the primary site is lost while degraded.
        topology.receiver!.kill9()
        try commits(10, "acknowledged from the local buffer again", timeout: 60)
        // The sender crashes while degraded: it comes back to the buffer and the exposure it recorded.
        topology.sender!.kill9()
        topology.sender = try fixture.walship("sender", topology.senderArguments)
        try commits(10, "acknowledged from the local buffer after the sender's restart", timeout: 60)
        writer.kill9()
        let lastWritten = acknowledgedCount(ackedFile)
        try waitUntil("the writer to stop", timeout: 10) { (!writer.isRunning, "") }
        #expect(acknowledgedCount(ackedFile) == lastWritten)
        let atDisaster = try sender()
        let reported = try #require(details(atDisaster)["rpoExposure"] as? [String: Any], "\(atDisaster)")
        let exposedBytes = UInt64(reported["bytes"] as? Int ?? 0)
        let offsite = try #require(lsn(reported["offsiteDurableLSN"] as? String ?? ""))
        let acknowledgedEnd = try #require(lsn(reported["acknowledgedLSN"] as? String ?? ""))
        #expect(acknowledgedEnd - offsite == exposedBytes)
        #expect((reported["seconds"] as? Double ?? 0) > 0, "\(reported)")
        kill(try postmasterPID(topology.primary), SIGKILL)

        // Under degrade-after only the sender's word can tell a lost primary from a cut link: it stays up and tells
        // the receiver once that is back.
        try topology.startReceiver(linkTimeout: 5)
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)
        topology.sender!.kill9()
        let promote = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool,
                "--report", fixture.logDirectory + "/promotion",
            ], timeout: 200, check: false)
        #expect(promote.status == 0, "\(promote.output)\(promote.error)")
        let present = Set(try standby.sql("SELECT id FROM acknowledged").split(separator: "\n").compactMap { Int($0) })
        let acked = acknowledgedIDs(ackedFile)
        let lost = Set(acked).subtracting(present)
        // Everything acknowledged while synchronous, and everything shipped from the buffer, survived.
        #expect(
            shippedFromBuffer.isSubset(of: present),
            "lost after being shipped: \(shippedFromBuffer.subtracting(present).sorted().prefix(20))")
        // The loss is real (the test can fail) and exactly the newest commits, those acknowledged without the DR site.
        #expect(!lost.isEmpty, "nothing was lost although commits were acknowledged without the DR site")
        if let firstLost = lost.min() { #expect(acked.filter { $0 >= firstLost }.allSatisfy(lost.contains)) }
        // The promoted replica replayed at least to the offsite end reported, so the WAL lost is at most
        // the acknowledged end minus that: the exposure reported at the moment of the disaster.
        let history = try String(contentsOfFile: standby.dataDirectory + "/pg_wal/00000002.history", encoding: .utf8)
        let recoveryEnd = try #require(
            history.split(separator: "\n").first.flatMap { line in lsn(String(line.split(separator: "\t")[1])) }, "\(history)")
        #expect(recoveryEnd >= offsite, "recovery ended at \(String(recoveryEnd, radix: 16)), before the reported offsite end")
        // Each lost commit lies past the offsite end reported (its recorded position is just before its commit
        // record, so within one small transaction of it): nothing older than the exposure was lost.
        let lostCommits = acknowledgedCommits(ackedFile).filter { lost.contains($0.id) }
        #expect(
            lostCommits.allSatisfy { $0.lsn + 512 > offsite && $0.lsn < acknowledgedEnd },
            "lost commits at \(lostCommits.prefix(5).map { String($0.lsn, radix: 16) }) vs offsite \(String(offsite, radix: 16))")
        print(
            "degrade drill: \(acked.count) acknowledged, \(lost.count) lost; exposure reported \(exposedBytes) B / \(reported["seconds"] ?? "?") s; WAL lost \(acknowledgedEnd > recoveryEnd ? acknowledgedEnd - recoveryEnd : 0) B"
        )
        #expect(acknowledgedEnd - min(acknowledgedEnd, recoveryEnd) <= exposedBytes)
    }

    /// The DR standby, from a base backup of the primary, streaming from the receiver's standby endpoint.
    func startDRStandby(_ fixture: Fixture, _ topology: ShipTopology, port: Int) throws -> Cluster {
        try fixture.baseBackup(of: topology.primary, name: "dr")
        return try fixture.startCopy(
            name: "dr", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(port) user=postgres application_name=dr_replica'",
                "hot_standby = on", "wal_retrieve_retry_interval = '1s'", "wal_receiver_timeout = '5s'",
            ])
    }

    func postmasterPID(_ cluster: Cluster) throws -> Int32 {
        let text = try String(contentsOfFile: cluster.dataDirectory + "/postmaster.pid", encoding: .utf8)
        return try #require(text.split(separator: "\n").first.flatMap { Int32($0) })
    }

    func restart(_ cluster: Cluster, fixture: Fixture) throws -> Cluster {
        try waitUntil("\(cluster.name) to restart after its crash", timeout: 60) {
            do {
                try cluster.start()
                return (true, "")
            } catch { return (false, "\(error)") }
        }
        return cluster
    }
}

/// A small deterministic generator (SplitMix64), so a printed seed repeats a drill's order.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
