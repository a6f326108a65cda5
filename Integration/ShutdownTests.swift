import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Stopping walship receive and walship send with SIGTERM or SIGINT (what systemctl stop and Ctrl-C send), in
/// synchronous mode under load from 8 sessions that record every commit the primary acknowledged: each drains and
/// exits 0 within its bound, says where it stopped, and a restart resumes without a gap.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct ShutdownTests {
    /// A synchronous topology streaming under load, with the file the writer records acknowledged commits in.
    func synchronousTopologyUnderLoad(_ fixture: Fixture) throws -> (ShipTopology, acked: String) {
        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_standby_names": "'walship'"])
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync"])
        try waitUntil("sync_state = sync", timeout: 60) {
            let state = try topology.primary.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walship'")
            return (state == "sync", state)
        }
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        let acked = fixture.directory + "/acked.txt"
        _ = try startAcknowledgedLoad(fixture, primary: topology.primary, table: "acknowledged", file: acked)
        try waitForMoreCommits(100, in: acked, "commits under load", timeout: 60) { topology.sender!.log.suffix(600).description }
        return (topology, acked)
    }

    /// Sends `signal` to `daemon` and waits up to `timeout` seconds for it to exit: its status and the seconds it took.
    func stop(_ daemon: Daemon, with signal: Int32, timeout: Double = 15) -> (status: Int32?, seconds: Double) {
        let signalled = Date()
        daemon.signal(signal)
        let status = daemon.waitForExit(timeout: timeout)
        return (status, Date().timeIntervalSince(signalled))
    }

    /// The sender's sent and durable positions from its status endpoint.
    func senderPositions(_ topology: ShipTopology) -> (sent: UInt64, durable: UInt64)? {
        guard let status = try? fetchStatus(port: topology.senderStatusPort),
            let system = (status["systems"] as? [[String: Any]])?.first,
            let sent = stageLSN(system, "sent"), let durable = stageLSN(system, "durable")
        else { return nil }
        return (sent, durable)
    }

    /// Stops the receiver's process (SIGSTOP) once the sender has sent WAL it has not acknowledged: a receiver that
    /// takes nothing more and answers nothing, as behind a dead network. SIGCONT undoes it.
    func freezeReceiverWithWALInFlight(_ topology: ShipTopology) throws {
        topology.receiver!.signal(SIGSTOP)
        try waitUntil("the sender to have sent WAL the frozen receiver has not acknowledged", timeout: 30) {
            let positions = senderPositions(topology)
            return (positions.map { $0.sent > $0.durable } ?? false, "\(positions.map { "\($0)" } ?? "no status")")
        }
    }

    /// After a stop: a restarted sender streams again, commits resume, every commit the primary acknowledged is in
    /// the receiver's durable WAL, and the spool has no gap. Returns the commits acknowledged after the restart's
    /// first 50 and the spool's segment count.
    func restartSenderAndCheckNothingIsLost(
        _ fixture: Fixture, _ topology: inout ShipTopology, acked: String
    ) throws -> (resumedAt: UInt64?, segments: Int) {
        let logBefore = topology.sender!.log.utf8.count
        topology.sender = try fixture.walship("sender", topology.senderArguments)
        try topology.waitUntilStreaming()
        let restartLog = String(decoding: topology.sender!.log.utf8.dropFirst(logBefore), as: UTF8.self)
        try waitForMoreCommits(50, in: acked, "commits to resume after the restart", timeout: 60) {
            topology.sender!.log.suffix(600).description
        }
        let acknowledged = acknowledgedCommits(acked)
        let durable = try topology.durable()
        let beyond = acknowledged.filter { $0.lsn >= durable }
        #expect(beyond.isEmpty, "acknowledged commits beyond the receiver's durable end: \(beyond.prefix(5))")
        let last = try topology.switchAndWait()
        let segments = try topology.verifySpool(through: last)
        #expect(segments >= 1)
        return (logged("start_lsn", in: restartLog, line: "streaming from the primary to the receiver").flatMap(lsn), segments)
    }

    /// The value of `walship.KEY=` in the last line of `log` that contains `message`.
    func logged(_ key: String, in log: String, line message: String) -> String? {
        guard let line = log.split(separator: "\n").last(where: { $0.contains(message) }),
            let range = line.range(of: "walship.\(key)=")
        else { return nil }
        return String(line[range.upperBound...].prefix { !$0.isWhitespace })
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func aStoppedReceiverDrainsAndKeepsEveryAcknowledgedCommit(_ signal: Int32) throws {
        let fixture = try Fixture("shutdown-receiver-\(signal)")
        defer { fixture.tearDown() }
        let (started, acked) = try synchronousTopologyUnderLoad(fixture)
        var topology = started
        let receiver = topology.receiver!

        let (status, seconds) = stop(receiver, with: signal)
        #expect(
            status == 0,
            "the receiver exited \(status.map(String.init) ?? "not at all") after the signal: \(receiver.log.suffix(1500))")
        #expect(seconds < 10, "the receiver took \(seconds) s to stop, longer than the drain's limit")
        let stopLog = receiver.log
        guard let stoppedAt = logged("durable_lsn", in: stopLog, line: "receiver stopped").flatMap(lsn) else {
            Issue.record("no \"receiver stopped ... durable_lsn=\" line: \(stopLog.suffix(1500))")
            return
        }
        #expect(stopLog.contains("walship.system=\(topology.systemIdentifier)"))
        // The sender was told why its link ended.
        try waitUntil("the sender to see the receiver stop", timeout: 15) {
            (topology.sender!.log.contains("walship receive is stopping"), topology.sender!.log.suffix(800).description)
        }
        // Synchronous mode: while the receiver is down no commit returns, so every commit acknowledged so far was
        // acknowledged before it stopped, and its commit record (after the recorded position) was durable.
        let before = acknowledgedCommits(acked)
        #expect(!before.isEmpty)
        let beyond = before.filter { $0.lsn >= stoppedAt }
        #expect(
            beyond.isEmpty,
            "commits acknowledged beyond the receiver's durable end \(String(stoppedAt, radix: 16)): \(beyond.prefix(5))")

        // A restarted receiver recovers at least that far from its spool: the welcome names its durable end.
        let logBefore = stopLog.utf8.count
        try topology.startReceiver()
        var resumedAt: UInt64?
        try waitUntil("the sender to connect to the restarted receiver", timeout: 60) {
            let log = String(decoding: topology.receiver!.log.utf8.dropFirst(logBefore), as: UTF8.self)
            resumedAt = logged("resume_lsn", in: log, line: "sender connected").flatMap(lsn)
            return (resumedAt != nil, log.suffix(800).description)
        }
        #expect(resumedAt! >= stoppedAt)
        let resumeSeconds = try waitForMoreCommits(50, in: acked, "commits to resume after the restart", timeout: 60) {
            topology.sender!.log.suffix(600).description
        }
        let last = try topology.switchAndWait()
        let segments = try topology.verifySpool(through: last)
        #expect(segments >= 1)
        print(
            "shutdown: receiver \(signalName(signal)): exit \(status ?? -1) after \(twoDecimals(seconds)) s; \(before.count) commits acknowledged before it, none beyond durable_lsn \(describe(stoppedAt)); resumed at \(describe(resumedAt!)), 50 more commits \(twoDecimals(resumeSeconds)) s after the restart; \(segments) spool segments, no gap"
        )
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func aStoppedSenderReportsWhatTheReceiverHoldsAndARestartLeavesNoGap(_ signal: Int32) throws {
        let fixture = try Fixture("shutdown-sender-\(signal)")
        defer { fixture.tearDown() }
        let (started, acked) = try synchronousTopologyUnderLoad(fixture)
        var topology = started
        let sender = topology.sender!

        let (status, seconds) = stop(sender, with: signal)
        #expect(
            status == 0,
            "the sender exited \(status.map(String.init) ?? "not at all") after the signal: \(sender.log.suffix(1500))")
        #expect(seconds < 10, "the sender took \(seconds) s to stop, longer than the drain's limit")
        let stopLog = sender.log
        guard let sent = logged("sent", in: stopLog, line: "sender stopped").flatMap(lsn),
            let durable = logged("durable", in: stopLog, line: "sender stopped").flatMap(lsn)
        else {
            Issue.record("no \"sender stopped ... sent=... durable=...\" line: \(stopLog.suffix(1500))")
            return
        }
        // Everything sent was acknowledged before it stopped, and the synchronous-mode hint is there.
        #expect(sent == durable, "sent \(describe(sent)), durable \(describe(durable))")
        #expect(stopLog.contains("keep waiting until a walship send"))
        // The receiver was told why the link ended.
        try waitUntil("the receiver to see the sender stop", timeout: 15) {
            (topology.receiver!.log.contains("walship send is stopping"), topology.receiver!.log.suffix(800).description)
        }
        // The primary's slot was told exactly what the receiver holds durably.
        #expect(try topology.durable() == durable)
        try waitUntil("the slot's restart_lsn to be the receiver's durable end", timeout: 15) {
            let restart = try topology.primary.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship_it'")
            return (lsn(restart) == durable, "restart_lsn \(restart), durable \(describe(durable))")
        }
        // PostgreSQL's rule: synchronous commits wait while no sender streams.
        try waitUntil("commits to wait for a synchronous standby", timeout: 30) {
            let waiting = try topology.primary.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            return ((Int(waiting) ?? 0) >= 1, waiting)
        }
        let before = acknowledgedCommits(acked).count

        // A restarted sender resumes exactly where the receiver's spool ends.
        let (resumedAt, segments) = try restartSenderAndCheckNothingIsLost(fixture, &topology, acked: acked)
        #expect(resumedAt == durable, "resumed at \(resumedAt.map(describe) ?? "?"), durable \(describe(durable))")
        print(
            "shutdown: sender \(signalName(signal)): exit \(status ?? -1) after \(twoDecimals(seconds)) s; sent = durable = restart_lsn \(describe(durable)); \(before) commits acknowledged before it; resumed at \(resumedAt.map(describe) ?? "?"); \(segments) spool segments, no gap"
        )
    }

    /// A receiver with its standby endpoint and a stock standby streaming from it: the endpoint closes first, the
    /// stop still takes no longer than a plain one, and the standby picks up again from the restarted receiver.
    @Test func aStoppedReceiverClosesItsStandbyEndpointAndTheStandbyResumes() throws {
        let fixture = try Fixture("shutdown-standby")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver()
        try topology.startSender()
        let standbys = StandbyTests()
        let standby = try standbys.makeStandby(fixture, topology, standbyPort: standbyPort)
        try topology.primary.sql("CREATE TABLE visits (id int PRIMARY KEY); INSERT INTO visits SELECT generate_series(1, 1000)")
        try standbys.waitForReplay(standby, topology.primary, "the first visits")
        let receiver = topology.receiver!

        let (status, seconds) = stop(receiver, with: SIGTERM)
        #expect(status == 0, "the receiver exited \(status.map(String.init) ?? "not at all"): \(receiver.log.suffix(1500))")
        #expect(seconds < 10, "the receiver took \(seconds) s to stop")
        let stopLog = receiver.log
        let endpointStopped = stopLog.range(of: "standby endpoint stopped")
        let receiverStopped = stopLog.range(of: "receiver stopped")
        #expect(endpointStopped != nil && receiverStopped != nil, "\(stopLog.suffix(1500))")
        if let endpointStopped, let receiverStopped {
            #expect(endpointStopped.lowerBound < receiverStopped.lowerBound, "the standby endpoint closed after the receiver")
        }

        try topology.primary.sql("INSERT INTO visits SELECT generate_series(1001, 2000)")
        try topology.startReceiver()
        try standbys.waitForReplay(standby, topology.primary, "the visits written while the receiver was stopped")
        #expect(try standby.sql("SELECT count(*) FROM visits") == "2000")
        print(
            "shutdown: receiver with a standby endpoint: exit \(status ?? -1) after \(twoDecimals(seconds)) s; the standby replayed again after the restart"
        )
    }

    /// A receiver that answers nothing (frozen) holds the sender's drain to its 5 s: the sender then exits 0 anyway,
    /// says what was not acknowledged, and leaves the slot at what the receiver held durably.
    @Test func aSenderWhoseReceiverDoesNotAnswerStopsAfterTheDrainTimeout() throws {
        let fixture = try Fixture("shutdown-sender-frozen-receiver")
        defer { fixture.tearDown() }
        let (started, acked) = try synchronousTopologyUnderLoad(fixture)
        var topology = started
        let sender = topology.sender!
        try freezeReceiverWithWALInFlight(topology)
        var thawed = false
        defer { if !thawed { topology.receiver!.signal(SIGCONT) } }

        let (status, seconds) = stop(sender, with: SIGTERM)
        #expect(status == 0, "the sender exited \(status.map(String.init) ?? "not at all"): \(sender.log.suffix(1500))")
        #expect(seconds >= 4.5 && seconds < 10, "the sender took \(seconds) s to stop; its drain waits 5 s at most")
        let stopLog = sender.log
        #expect(stopLog.contains("the receiver did not acknowledge all WAL sent before the stop's time ran out"))
        guard let sent = logged("sent", in: stopLog, line: "sender stopped").flatMap(lsn),
            let durable = logged("durable", in: stopLog, line: "sender stopped").flatMap(lsn)
        else {
            Issue.record("no \"sender stopped ... sent=... durable=...\" line: \(stopLog.suffix(1500))")
            return
        }
        #expect(sent > durable, "sent \(describe(sent)), durable \(describe(durable))")
        // The primary keeps what the receiver did not acknowledge.
        let restart = try topology.primary.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship_it'")
        #expect(lsn(restart) == durable, "restart_lsn \(restart), durable \(describe(durable))")
        let before = acknowledgedCommits(acked).count

        topology.receiver!.signal(SIGCONT)
        thawed = true
        let (resumedAt, segments) = try restartSenderAndCheckNothingIsLost(fixture, &topology, acked: acked)
        // The thawed receiver may still have written what was in its socket: the restart resumes from its durable end.
        #expect(resumedAt.map { $0 >= durable && $0 <= sent } == true, "resumed at \(resumedAt.map(describe) ?? "?")")
        print(
            "shutdown: sender, receiver frozen: exit \(status ?? -1) after \(twoDecimals(seconds)) s; sent \(describe(sent)), durable \(describe(durable)); \(before) commits acknowledged before it; resumed at \(resumedAt.map(describe) ?? "?"); \(segments) spool segments, no gap"
        )
    }

    /// A second signal during a drain that waits (its receiver frozen) exits at once with 128 + N; the WAL the
    /// receiver acknowledged is all a restart needs.
    @Test func aSecondSignalDuringTheDrainExitsAtOnce() throws {
        let fixture = try Fixture("shutdown-second-signal")
        defer { fixture.tearDown() }
        let (started, acked) = try synchronousTopologyUnderLoad(fixture)
        var topology = started
        let sender = topology.sender!
        try freezeReceiverWithWALInFlight(topology)
        var thawed = false
        defer { if !thawed { topology.receiver!.signal(SIGCONT) } }

        sender.signal(SIGTERM)
        try waitUntil("the sender to begin its drain", timeout: 5) {
            (sender.log.contains("stopping on SIGTERM"), sender.log.suffix(800).description)
        }
        let (status, seconds) = stop(sender, with: SIGINT, timeout: 5)
        #expect(
            status == 128 + SIGINT, "the sender exited \(status.map(String.init) ?? "not at all"): \(sender.log.suffix(1500))")
        #expect(seconds < 2, "the sender took \(seconds) s to exit after the second signal")
        #expect(sender.log.contains("SIGINT during the stop that SIGTERM began"))
        let before = acknowledgedCommits(acked).count

        topology.receiver!.signal(SIGCONT)
        thawed = true
        let (_, segments) = try restartSenderAndCheckNothingIsLost(fixture, &topology, acked: acked)
        print(
            "shutdown: second signal: exit \(status ?? -1) after \(twoDecimals(seconds)) s; \(before) commits acknowledged before it; \(segments) spool segments after the restart, no gap"
        )
    }
}

/// `X/X`, as PostgreSQL writes an LSN.
private func describe(_ position: UInt64) -> String {
    String(position >> 32, radix: 16, uppercase: true) + "/" + String(position & 0xFFFF_FFFF, radix: 16, uppercase: true)
}

private func twoDecimals(_ value: Double) -> String { String(format: "%.2f", value) }

/// The name in figures' lines.
private func signalName(_ signal: Int32) -> String {
    signal == SIGTERM ? "SIGTERM" : signal == SIGINT ? "SIGINT" : "signal \(signal)"
}
