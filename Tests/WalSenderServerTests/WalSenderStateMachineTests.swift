import Testing
import WALCore
@testable import WalSenderServer

@Suite struct WalSenderStateMachineTests {
    let spool = SpoolSnapshot(systemIdentifier: 7_711_355_351_252_201_643, timeline: 2, durable: LSN("0/6000100")!,
                              segmentSize: .default,
                              historyFiles: [2: Array("1\t0/5000060\tno recovery target specified\n".utf8)],
                              slots: ["dr_slot": LSN("0/5800000")!])

    func ready() -> WalSenderStateMachine {
        var m = WalSenderStateMachine(authentication: .trust)
        _ = m.startupMessage(.startup(parameters: ["user": "u", "replication": "true"]))
        return m
    }

    @Test func startupNegotiationAndTrust() {
        var m = WalSenderStateMachine(authentication: .trust)
        #expect(m.startupMessage(.sslRequest) == .refuseEncryption)
        #expect(m.startupMessage(.gssEncryptionRequest) == .refuseEncryption)
        #expect(m.startupMessage(.startup(parameters: ["user": "u", "replication": "true", "application_name": "dr"]))
            == .accept(applicationName: "dr"))
        #expect(m.state == .ready)
    }

    @Test func passwordIsCheckedAndNonReplicationConnectionsRefused() {
        var m = WalSenderStateMachine(authentication: .password("s3cret"))
        #expect(m.startupMessage(.startup(parameters: ["user": "u", "replication": "on"])) == .requestPassword)
        #expect(m.startupMessage(.password(Array("s3cret".utf8) + [0])) == .accept(applicationName: "walreceiver"))
        var wrong = WalSenderStateMachine(authentication: .password("s3cret"))
        _ = wrong.startupMessage(.startup(parameters: ["user": "u", "replication": "true"]))
        #expect(wrong.startupMessage(.password(Array("guess".utf8))) == .error(code: "28P01", message: "password authentication failed for user \"u\"", fatal: true))
        #expect(wrong.state == .closed)
        var sql = WalSenderStateMachine(authentication: .trust)
        guard case .error(_, _, true) = sql.startupMessage(.startup(parameters: ["user": "u", "database": "postgres"])) else {
            Issue.record("a non-replication connection was accepted"); return
        }
        var early = WalSenderStateMachine(authentication: .trust)
        guard case .close = early.startupMessage(.query("IDENTIFY_SYSTEM")) else { Issue.record("a query before startup"); return }
    }

    @Test func commandsAnsweredFromTheSpool() {
        var m = ready()
        guard case .result(_, let rows, "IDENTIFY_SYSTEM") = m.query("IDENTIFY_SYSTEM", spool: spool) else {
            Issue.record("no IDENTIFY_SYSTEM result"); return
        }
        #expect(rows == [[Array("7711355351252201643".utf8), Array("2".utf8), Array("0/6000100".utf8), nil]])
        guard case .result(_, let history, "TIMELINE_HISTORY") = m.query("TIMELINE_HISTORY 2", spool: spool) else {
            Issue.record("no history"); return
        }
        #expect(history[0][0] == Array("00000002.history".utf8))
        guard case .error("58P01", _, false) = m.query("TIMELINE_HISTORY 3", spool: spool) else { Issue.record("missing history served"); return }
        guard case .result(_, let size, "SHOW") = m.query("SHOW wal_segment_size", spool: spool) else { Issue.record("no SHOW"); return }
        #expect(size == [[Array("16MB".utf8)]])
        guard case .result(_, let slot, _) = m.query("READ_REPLICATION_SLOT dr_slot", spool: spool) else { Issue.record("no slot"); return }
        #expect(slot[0][1] == Array("0/5800000".utf8))
        guard case .error("42601", _, false) = m.query("SELECT 1", spool: spool) else { Issue.record("SQL accepted"); return }
        #expect(m.state == .ready)
    }

    @Test func startReplicationChecksTimelineAndPosition() {
        var m = ready()
        #expect(m.query("START_REPLICATION 0/6000000 TIMELINE 2", spool: spool)
            == .startStreaming(slot: nil, start: LSN("0/6000000")!, timeline: 2, end: nil))
        var ahead = ready()
        guard case .error(_, let message, false) = ahead.query("START_REPLICATION 0/7000000 TIMELINE 2", spool: spool) else {
            Issue.record("a start ahead of the spool was accepted"); return
        }
        #expect(message.contains("ahead of the WAL flush position"))
        var unknown = ready()
        guard case .error(_, let notInHistory, false) = unknown.query("START_REPLICATION 0/5000000 TIMELINE 9", spool: spool) else {
            Issue.record("an unknown timeline was accepted"); return
        }
        #expect(notInHistory.contains("not in this server's history"))
        var pastFork = ready()
        guard case .error = pastFork.query("START_REPLICATION 0/5100000 TIMELINE 1", spool: spool) else {
            Issue.record("a start past the fork was accepted"); return
        }
    }

    @Test func historicTimelineEndsWithTheNextTimeline() {
        var m = ready()
        let end = WalSenderStateMachine.TimelineEnd(switchPoint: LSN("0/5000060")!, next: 2)
        #expect(m.query("START_REPLICATION SLOT \"dr_slot\" 0/5000000 TIMELINE 1", spool: spool)
            == .startStreaming(slot: "dr_slot", start: LSN("0/5000000")!, timeline: 1, end: end))
        // A CopyDone before everything was sent is the standby quitting.
        var early = m
        guard case .close = early.copyDoneReceived() else { Issue.record("early CopyDone treated as end of timeline"); return }
        m.historicTimelineSent()
        #expect(m.copyDoneReceived() == .endOfTimeline(end))
        #expect(m.state == .ready)
        // The standby then asks for the new timeline as a stock one does.
        #expect(m.query("START_REPLICATION 0/5000000 TIMELINE 2", spool: spool)
            == .startStreaming(slot: nil, start: LSN("0/5000000")!, timeline: 2, end: nil))
    }
}
