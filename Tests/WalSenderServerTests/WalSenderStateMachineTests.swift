import Foundation
import Testing
import WALCore

@testable import WalSenderServer

@Suite struct WalSenderStateMachineTests {
    let spool = SpoolSnapshot(
        systemIdentifier: 7_711_355_351_252_201_643, timeline: 2, durable: LSN("0/6000100")!,
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
        #expect(!m.encrypted)
        #expect(
            m.startupMessage(.startup(parameters: ["user": "u", "replication": "true", "application_name": "dr"]))
                == .accept(applicationName: "dr"))
        #expect(m.state == .ready)
    }

    @Test func requiredTLSIsAcceptedOnceAndAPlaintextStartupIsRefused() {
        var m = WalSenderStateMachine(authentication: .trust, requireTLS: true)
        #expect(m.startupMessage(.gssEncryptionRequest) == .refuseEncryption)
        #expect(m.startupMessage(.sslRequest) == .acceptEncryption)
        #expect(m.encrypted)
        // A second request inside TLS is answered like PostgreSQL does outside it: no.
        #expect(m.startupMessage(.sslRequest) == .refuseEncryption)
        #expect(
            m.startupMessage(.startup(parameters: ["user": "u", "replication": "true", "application_name": "dr"]))
                == .accept(applicationName: "dr"))

        var plaintext = WalSenderStateMachine(authentication: .trust, requireTLS: true)
        guard
            case .error(let code, let message, let fatal) = plaintext.startupMessage(
                .startup(parameters: ["user": "u", "replication": "true"]))
        else {
            Issue.record("a plaintext startup was not refused")
            return
        }
        #expect(code == "28000" && fatal && message.contains("sslmode=require"))
        #expect(plaintext.state == .closed)
    }

    /// RFC 7677's example exchange (user "user", password "pencil"), carried in PostgreSQL's SASL messages.
    static let rfcVerifier = SCRAMVerifier(password: "pencil", salt: Array(Data(base64Encoded: "W22ZaJ0SNY7soEsUEjb6gQ==")!))
    static let rfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

    func saslInitial(_ data: String) -> FrontendMessage {
        let bytes = Array(data.utf8)
        return .password(
            Array("SCRAM-SHA-256".utf8) + [0] + withUnsafeBytes(of: Int32(bytes.count).bigEndian, Array.init) + bytes)
    }

    @Test func scramFollowsTheRFCExample() {
        var m = WalSenderStateMachine(authentication: .scram(Self.rfcVerifier), serverNonce: Self.rfcServerNonce)
        #expect(m.startupMessage(.startup(parameters: ["user": "user", "replication": "on"])) == .requestSASL)
        #expect(
            m.startupMessage(saslInitial("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"))
                == .saslContinue("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"))
        let final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        #expect(
            m.startupMessage(.password(Array(final.utf8)))
                == .accept(applicationName: "walreceiver", saslFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        #expect(m.state == .ready)
    }

    @Test func scramRefusesAWrongProofAndMalformedMessages() {
        var wrong = WalSenderStateMachine(authentication: .scram(Self.rfcVerifier), serverNonce: Self.rfcServerNonce)
        _ = wrong.startupMessage(.startup(parameters: ["user": "u", "replication": "true"]))
        _ = wrong.startupMessage(saslInitial("n,,n=,r=rOprNGfwEbeRWgbNEkqO"))
        let forged =
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=" + Data(repeating: 7, count: 32).base64EncodedString()
        #expect(
            wrong.startupMessage(.password(Array(forged.utf8)))
                == .error(code: "28P01", message: "password authentication failed for user \"u\"", fatal: true))
        #expect(wrong.state == .closed)
        for bad in ["p=tls-server-end-point,,n=,r=abc", "n,,n=,r=", "garbage", ""] {
            var m = WalSenderStateMachine(authentication: .scram(Self.rfcVerifier), serverNonce: "x")
            _ = m.startupMessage(.startup(parameters: ["user": "u", "replication": "true"]))
            guard case .error(_, _, true) = m.startupMessage(saslInitial(bad)) else {
                Issue.record("accepted \(bad)")
                continue
            }
        }
        var mechanism = WalSenderStateMachine(authentication: .scram(Self.rfcVerifier), serverNonce: "x")
        _ = mechanism.startupMessage(.startup(parameters: ["user": "u", "replication": "true"]))
        guard case .error(_, _, true) = mechanism.startupMessage(.password(Array("cleartext".utf8) + [0])) else {
            Issue.record("a cleartext password was taken for SASL")
            return
        }
        var replayedNonce = WalSenderStateMachine(authentication: .scram(Self.rfcVerifier), serverNonce: "fresh")
        _ = replayedNonce.startupMessage(.startup(parameters: ["user": "u", "replication": "true"]))
        _ = replayedNonce.startupMessage(saslInitial("n,,n=,r=rOprNGfwEbeRWgbNEkqO"))
        let old = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        guard case .error(_, _, true) = replayedNonce.startupMessage(.password(Array(old.utf8))) else {
            Issue.record("a final message with another nonce was accepted")
            return
        }
    }

    @Test func storedVerifiersParse() throws {
        let text = Self.rfcVerifier.text
        #expect(text.hasPrefix("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"))
        #expect(SCRAMVerifier(parsing: text) == Self.rfcVerifier)
        for bad in [
            "", "md5abc", "SCRAM-SHA-256$x:salt$a:b", "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
            "SCRAM-SHA-256$4096:c2FsdA==",
        ] {
            #expect(SCRAMVerifier(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func nonReplicationConnectionsRefused() {
        var sql = WalSenderStateMachine(authentication: .trust)
        guard case .error(_, _, true) = sql.startupMessage(.startup(parameters: ["user": "u", "database": "postgres"])) else {
            Issue.record("a non-replication connection was accepted")
            return
        }
        var early = WalSenderStateMachine(authentication: .trust)
        guard case .close = early.startupMessage(.query("IDENTIFY_SYSTEM")) else {
            Issue.record("a query before startup")
            return
        }
    }

    @Test func commandsAnsweredFromTheSpool() {
        var m = ready()
        guard case .result(_, let rows, "IDENTIFY_SYSTEM") = m.query("IDENTIFY_SYSTEM", spool: spool) else {
            Issue.record("no IDENTIFY_SYSTEM result")
            return
        }
        #expect(rows == [[Array("7711355351252201643".utf8), Array("2".utf8), Array("0/6000100".utf8), nil]])
        guard case .result(_, let history, "TIMELINE_HISTORY") = m.query("TIMELINE_HISTORY 2", spool: spool) else {
            Issue.record("no history")
            return
        }
        #expect(history[0][0] == Array("00000002.history".utf8))
        guard case .error("58P01", _, false) = m.query("TIMELINE_HISTORY 3", spool: spool) else {
            Issue.record("missing history served")
            return
        }
        guard case .result(_, let size, "SHOW") = m.query("SHOW wal_segment_size", spool: spool) else {
            Issue.record("no SHOW")
            return
        }
        #expect(size == [[Array("16MB".utf8)]])
        guard case .result(_, let slot, _) = m.query("READ_REPLICATION_SLOT dr_slot", spool: spool) else {
            Issue.record("no slot")
            return
        }
        #expect(slot[0][1] == Array("0/5800000".utf8))
        guard case .error("42601", _, false) = m.query("SELECT 1", spool: spool) else {
            Issue.record("SQL accepted")
            return
        }
        #expect(m.state == .ready)
    }

    @Test func startReplicationChecksTimelineAndPosition() {
        var m = ready()
        #expect(
            m.query("START_REPLICATION 0/6000000 TIMELINE 2", spool: spool)
                == .startStreaming(slot: nil, start: LSN("0/6000000")!, timeline: 2, end: nil))
        var ahead = ready()
        guard case .error(_, let message, false) = ahead.query("START_REPLICATION 0/7000000 TIMELINE 2", spool: spool) else {
            Issue.record("a start ahead of the spool was accepted")
            return
        }
        #expect(message.contains("ahead of the WAL flush position"))
        var unknown = ready()
        guard case .error(_, let notInHistory, false) = unknown.query("START_REPLICATION 0/5000000 TIMELINE 9", spool: spool)
        else {
            Issue.record("an unknown timeline was accepted")
            return
        }
        #expect(notInHistory.contains("not in this server's history"))
        var pastFork = ready()
        guard case .error = pastFork.query("START_REPLICATION 0/5100000 TIMELINE 1", spool: spool) else {
            Issue.record("a start past the fork was accepted")
            return
        }
    }

    @Test func historicTimelineEndsWithTheNextTimeline() {
        var m = ready()
        let end = WalSenderStateMachine.TimelineEnd(switchPoint: LSN("0/5000060")!, next: 2)
        #expect(
            m.query("START_REPLICATION SLOT \"dr_slot\" 0/5000000 TIMELINE 1", spool: spool)
                == .startStreaming(slot: "dr_slot", start: LSN("0/5000000")!, timeline: 1, end: end))
        // A CopyDone before everything was sent is the standby quitting.
        var early = m
        guard case .close = early.copyDoneReceived() else {
            Issue.record("early CopyDone treated as end of timeline")
            return
        }
        m.historicTimelineSent(end)
        #expect(m.copyDoneReceived() == .endOfTimeline(end))
        #expect(m.state == .ready)
        // The standby then asks for the new timeline as a stock one does.
        #expect(
            m.query("START_REPLICATION 0/5000000 TIMELINE 2", spool: spool)
                == .startStreaming(slot: nil, start: LSN("0/5000000")!, timeline: 2, end: nil))
    }

    @Test func aLiveTimelineThatEndsWhileStreamingEndsWithTheNextTimeline() {
        // Streaming starts while timeline 1 is the spool's newest; a failover upstream ends it mid-stream.
        let live = SpoolSnapshot(
            systemIdentifier: spool.systemIdentifier, timeline: 1, durable: LSN("0/5000060")!,
            segmentSize: .default)
        var m = ready()
        #expect(
            m.query("START_REPLICATION 0/5000000 TIMELINE 1", spool: live)
                == .startStreaming(slot: nil, start: LSN("0/5000000")!, timeline: 1, end: nil))
        let found = WalSenderStateMachine.TimelineEnd(switchPoint: LSN("0/5000060")!, next: 2)
        m.historicTimelineSent(found)
        #expect(m.copyDoneReceived() == .endOfTimeline(found))
        #expect(m.state == .ready)
    }
}
