import Foundation
import NIOCore
import ShipProtocol
import StatusModel
import Testing
import WALCore

@testable import Receiver

@Suite struct ReceiverLinkStateMachineTests {
    typealias Machine = ReceiverLinkStateMachine

    let fence = Machine.Fence(promotedAt: "2026-12-01T10:00:00Z", promotedTimeline: 2, recordPath: "/spool/42/FENCED")

    func machine(allowedSources: [String: UInt64] = [:], acceptFenced: Bool = false) -> Machine {
        Machine(allowedSources: allowedSources, acceptFenced: acceptFenced, receiverName: "dr")
    }

    func hello(_ role: LinkRole = .stream, system: UInt64 = 42, version: UInt16 = shipProtocolVersion) -> ShipMessage {
        .hello(
            Hello(
                protocolVersion: version, role: role, synchronous: false, systemIdentifier: system, timeline: 1,
                walSegmentSize: UInt32(WALSegmentSize.default.bytes), senderName: "primary-a"))
    }

    let wal = ShipMessage.walData(
        WALData(
            timeline: 1, startLSN: LSN("0/3000000")!, primaryEndLSN: LSN("0/3000005")!,
            primarySendTime: PostgresTimestamp(rawValue: 1), compression: .none,
            uncompressedLength: 5, payload: ByteBuffer(bytes: [1, 2, 3, 4, 5])))
    let backupStart = BackupStart(startLSN: LSN("0/2000028")!, timeline: 1, estimatedBytes: 0, label: "unit")
    let backupData = BackupData(part: .archive, compression: .none, uncompressedLength: 3, payload: ByteBuffer(bytes: [1, 2, 3]))
    let backupEnd = BackupEnd(stopLSN: LSN("0/2000100")!, timeline: 1)

    /// A machine welcomed on a link of `role`, with no fence.
    func welcomed(_ role: LinkRole) -> Machine {
        var m = machine()
        _ = m.firstFrameReceived(hello(role), certificateName: nil)
        _ = m.spoolOpened(fence: nil)
        if role == .stream { _ = m.streamClaimed() }
        _ = m.resumePointFound(durable: LSN("0/3000000")!, timeline: 1)
        return m
    }

    func refusal(_ action: Machine.Action) -> Refusal? {
        guard case .refuse(let refusal) = action else { return nil }
        return refusal
    }

    // MARK: - Handshake

    @Test func aStreamHelloOpensTheSpoolClaimsTheStreamMakesItDurableAndWelcomes() {
        var m = machine()
        #expect(m.firstFrameReceived(hello(), certificateName: nil) == .openSpool(system: 42, segmentSize: .default))
        #expect(m.spoolOpened(fence: nil) == .claimStream(acceptedFence: nil))
        #expect(m.streamClaimed() == .findResumePoint(makeDurableFirst: true, acceptedFence: nil))
        #expect(
            m.resumePointFound(durable: LSN("0/3000000")!, timeline: 1)
                == .welcome(Welcome(resumeLSN: LSN("0/3000000")!, resumeTimeline: 1, receiverName: "dr")))
        guard case .streaming = m.state else {
            Issue.record("\(m.state)")
            return
        }
    }

    /// The receiver is upgraded first: a sender of the previous version is welcomed in its own version, and mode
    /// frames on a stream go to the mode history; a backup link has none to send.
    @Test func aPreviousVersionIsWelcomedInItsOwnVersionAndModeChangesAreRecorded() {
        var old = machine()
        _ = old.firstFrameReceived(hello(version: 1), certificateName: nil)
        _ = old.spoolOpened(fence: nil)
        _ = old.streamClaimed()
        #expect(
            old.resumePointFound(durable: LSN("0/3000000")!, timeline: 1)
                == .welcome(Welcome(protocolVersion: 1, resumeLSN: LSN("0/3000000")!, resumeTimeline: 1, receiverName: "dr")))

        var m = welcomed(.stream)
        let change = ModeChange(mode: .async, lsn: LSN("0/3000100")!, observedAt: PostgresTimestamp(rawValue: 5))
        #expect(m.frameReceived(.mode(change)) == .recordMode(change))
        var backup = welcomed(.backup)
        #expect(refusal(backup.frameReceived(.mode(change)))?.code == .protocolViolation)
    }

    @Test func aBackupHelloClaimsNoStreamAndIsWelcomedAtTheCurrentPosition() {
        var m = machine()
        #expect(m.firstFrameReceived(hello(.backup), certificateName: nil) == .openSpool(system: 42, segmentSize: .default))
        #expect(m.spoolOpened(fence: nil) == .findResumePoint(makeDurableFirst: false, acceptedFence: nil))
        #expect(
            m.resumePointFound(durable: LSN("0/3000000")!, timeline: 1)
                == .welcome(Welcome(resumeLSN: LSN("0/3000000")!, resumeTimeline: 1, receiverName: "dr")))
        guard case .receivingBackup(_, started: false) = m.state else {
            Issue.record("\(m.state)")
            return
        }
    }

    @Test func aCertificatePinnedToOneSystemShipsOnlyThatSystem() {
        let pinned = ["site-a": UInt64(42)]
        var right = machine(allowedSources: pinned)
        #expect(
            right.firstFrameReceived(hello(system: 42), certificateName: "site-a")
                == .openSpool(system: 42, segmentSize: .default))

        var wrongSystem = machine(allowedSources: pinned)
        #expect(
            wrongSystem.firstFrameReceived(hello(system: 43), certificateName: "site-a")
                == .refuse(
                    Refusal(
                        code: .sourceNotAllowed,
                        message:
                            "the sender's certificate \"site-a\" may ship system 42 only, but it offered system 43 (hint: is this sender pointed at the right primary? else fix --allow-source site-a=43)"
                    )))
        #expect(wrongSystem.state == .closed)

        var unlisted = machine(allowedSources: pinned)
        #expect(
            unlisted.firstFrameReceived(hello(), certificateName: "site-b")
                == .refuse(
                    Refusal(
                        code: .sourceNotAllowed,
                        message:
                            "the sender's certificate \"site-b\" is not allowed to ship here (hint: add --allow-source site-b=42 to walship receive)"
                    )))

        var nameless = machine(allowedSources: pinned)
        #expect(
            refusal(nameless.firstFrameReceived(hello(), certificateName: nil))?.message
                == "the sender's certificate \"without a name\" is not allowed to ship here (hint: add --allow-source NAME=42 to walship receive)"
        )

        // Without --allow-source any certificate the CA signed may ship any system.
        var open = machine()
        #expect(
            open.firstFrameReceived(hello(system: 43), certificateName: "site-a") == .openSpool(system: 43, segmentSize: .default)
        )
    }

    @Test func anInvalidHelloIsRefused() {
        var old = machine()
        #expect(
            refusal(old.firstFrameReceived(hello(version: shipProtocolVersion + 1), certificateName: nil))?.code
                == .unsupportedVersion)
        var zero = machine()
        #expect(
            refusal(zero.firstFrameReceived(hello(system: 0), certificateName: nil))
                == Refusal(code: .protocolViolation, message: "system identifier 0 is not a PostgreSQL system"))
        #expect(zero.state == .closed)
    }

    @Test func aFencedSystemRefusesTheOldPrimarysStream() {
        var m = machine()
        _ = m.firstFrameReceived(hello(), certificateName: nil)
        #expect(
            m.spoolOpened(fence: fence)
                == .refuse(
                    Refusal(
                        code: .fenced,
                        message:
                            "system 42 was promoted at the DR site at 2026-12-01T10:00:00Z (timeline 2); WAL from the old primary (sender primary-a, timeline 1) is refused. Hint: re-seed the DR site and remove /spool/42/FENCED, or restart walship receive with --force to accept it anyway"
                    )))
        #expect(m.state == .closed)
    }

    @Test func aFencedSystemRefusesBackupsToo() {
        var m = machine()
        _ = m.firstFrameReceived(hello(.backup), certificateName: nil)
        let answer = refusal(m.spoolOpened(fence: fence))
        #expect(answer?.code == .fenced)
        #expect(
            answer?.message.hasPrefix(
                "system 42 was promoted at the DR site at 2026-12-01T10:00:00Z (timeline 2); a base backup from the old primary (sender primary-a, timeline 1) is refused."
            ) == true,
            "\(answer?.message ?? "no refusal")")
        #expect(m.state == .closed)
    }

    @Test func forceAcceptsAFencedSystemAndSaysSo() {
        var stream = machine(acceptFenced: true)
        _ = stream.firstFrameReceived(hello(), certificateName: nil)
        #expect(stream.spoolOpened(fence: fence) == .claimStream(acceptedFence: fence))
        var backup = machine(acceptFenced: true)
        _ = backup.firstFrameReceived(hello(.backup), certificateName: nil)
        #expect(backup.spoolOpened(fence: fence) == .findResumePoint(makeDurableFirst: false, acceptedFence: fence))
    }

    @Test func aLiveStreamKeepsTheSystem() {
        var m = machine()
        _ = m.firstFrameReceived(hello(), certificateName: nil)
        _ = m.spoolOpened(fence: nil)
        let busy = Refusal(code: .streamAlreadyActive, message: "system 42 is already streaming")
        #expect(m.streamClaimRefused(busy) == .refuse(busy))
        #expect(m.state == .closed)
    }

    @Test func spoolFailuresDuringTheHandshakeAreRefusedWithTheirStep() {
        var open = machine()
        _ = open.firstFrameReceived(hello(), certificateName: nil)
        #expect(
            open.spoolFailed(.open, error: "disk gone")
                == .refuse(
                    Refusal(
                        code: .spoolFailure, message: "cannot open the spool for system 42: disk gone")))
        var fenceUnreadable = machine()
        _ = fenceUnreadable.firstFrameReceived(hello(), certificateName: nil)
        #expect(
            fenceUnreadable.spoolFailed(.readFence, error: "bad json")
                == .refuse(
                    Refusal(
                        code: .spoolFailure, message: "cannot read the fence of system 42: bad json")))
        var unsynced = machine()
        _ = unsynced.firstFrameReceived(hello(), certificateName: nil)
        _ = unsynced.spoolOpened(fence: nil)
        _ = unsynced.streamClaimed()
        #expect(
            unsynced.spoolFailed(.makeDurable, error: "fsync failed")
                == .refuse(
                    Refusal(
                        code: .spoolFailure, message: "the spool for system 42 cannot be written: fsync failed")))
        #expect(unsynced.state == .closed)
    }

    @Test func framesBeforeTheHelloCloseTheLinkWithoutAnAnswer() {
        var m = machine()
        #expect(
            m.firstFrameReceived(wal, certificateName: nil)
                == .closeWithoutAnswer(Refusal(code: .protocolViolation, message: "expected a hello frame first, got walData")))
        #expect(m.state == .closed)
        // Nothing after that reopens it.
        #expect(m.frameReceived(hello()) == .none)
    }

    @Test func framesBeforeTheWelcomeAreRefused() {
        var m = machine()
        _ = m.firstFrameReceived(hello(), certificateName: nil)
        #expect(
            m.frameReceived(wal)
                == .refuse(Refusal(code: .protocolViolation, message: "unexpected walData frame before the receiver's welcome")))
        #expect(m.state == .closed)
    }

    @Test func handshakeEventsOutOfOrderAreRefused() {
        var m = machine()
        #expect(refusal(m.streamClaimed())?.code == .protocolViolation)
        #expect(m.state == .closed)
        var backup = machine()
        _ = backup.firstFrameReceived(hello(.backup), certificateName: nil)
        _ = backup.spoolOpened(fence: nil)
        #expect(refusal(backup.streamClaimed())?.code == .protocolViolation, "a backup link never claims the stream")
    }

    // MARK: - Streaming

    @Test func aStreamQueuesWALAndHistoryAndAnswersKeepalives() {
        var m = welcomed(.stream)
        guard case .walData(let data) = wal else { return }
        #expect(m.frameReceived(wal) == .queueWAL(data))
        let history = HistoryFile(timeline: 2, content: ByteBuffer(string: "1\t0/5000060\tno recovery target specified\n"))
        #expect(m.frameReceived(.history(history)) == .queueHistory(history, admitsLink: false))
        let time = PostgresTimestamp(rawValue: 77)
        #expect(
            m.frameReceived(.keepalive(Keepalive(primaryEndLSN: LSN("0/3000100")!, sendTime: time, replyRequested: true)))
                == .keepalive(primaryEnd: LSN("0/3000100")!, sendTime: time, sendAck: true))
        #expect(
            m.frameReceived(.keepalive(Keepalive(primaryEndLSN: .invalid, sendTime: time, replyRequested: false)))
                == .keepalive(primaryEnd: nil, sendTime: time, sendAck: false))
        guard case .streaming = m.state else {
            Issue.record("\(m.state)")
            return
        }
    }

    @Test(arguments: [
        ShipMessage.ack(Ack(timeline: 1, writtenLSN: LSN(1), durableLSN: LSN(1), receiverTime: PostgresTimestamp(rawValue: 0))),
        .hello(
            Hello(role: .stream, synchronous: false, systemIdentifier: 42, timeline: 1, walSegmentSize: 16 << 20, senderName: "x")
        ),
        .welcome(Welcome(resumeLSN: LSN(0), resumeTimeline: 1, receiverName: "x")),
        .backupStart(BackupStart(startLSN: LSN(0), timeline: 1, estimatedBytes: 0, label: "x")),
        .backupEnd(BackupEnd(stopLSN: LSN(0), timeline: 1)),
        .backupStatus(BackupStatus(backupID: "x", state: .complete, durableLSN: LSN(0))),
    ])
    func unexpectedFramesEndAStream(_ frame: ShipMessage) {
        var m = welcomed(.stream)
        #expect(
            m.frameReceived(frame)
                == .refuse(Refusal(code: .protocolViolation, message: "unexpected \(frame.kind) frame on a streaming link")))
        #expect(m.state == .closed)
        #expect(m.frameReceived(wal) == .none, "nothing is queued after the refusal")
    }

    @Test func theSenderEndingTheLinkClosesItWithItsReason() {
        var m = welcomed(.stream)
        #expect(
            m.frameReceived(.refusal(Refusal(code: .shuttingDown, message: "walship send is stopping")))
                == .refuse(Refusal(code: .shuttingDown, message: "the sender ended the link: walship send is stopping")))
        #expect(m.state == .closed)
    }

    @Test func anEndedLinkIsClosed() {
        var m = welcomed(.stream)
        m.linkEnded()
        #expect(m.state == .closed)
        #expect(m.frameReceived(wal) == .none)
    }

    // MARK: - Backups

    @Test func aBackupIsStartedStoredAndFinishedInOrder() {
        var m = welcomed(.backup)
        #expect(m.frameReceived(.backupStart(backupStart)) == .beginBackup(backupStart))
        #expect(m.frameReceived(.backupData(backupData)) == .storeBackupData(backupData))
        let time = PostgresTimestamp(rawValue: 5)
        #expect(
            m.frameReceived(.keepalive(Keepalive(primaryEndLSN: LSN("0/3000100")!, sendTime: time, replyRequested: true)))
                == .keepalive(primaryEnd: nil, sendTime: time, sendAck: true), "the stream link reports the primary's position")
        #expect(m.frameReceived(.backupEnd(backupEnd)) == .finishBackup(backupEnd))
        guard case .backupStored = m.state else {
            Issue.record("\(m.state)")
            return
        }
        #expect(m.frameReceived(.backupData(backupData)) == .none, "a stored backup reads no more frames")
    }

    @Test func backupFramesOutOfOrderAreRefused() {
        var data = welcomed(.backup)
        #expect(
            data.frameReceived(.backupData(backupData))
                == .refuse(Refusal(code: .protocolViolation, message: "backup data before its start")))
        var end = welcomed(.backup)
        #expect(
            end.frameReceived(.backupEnd(backupEnd))
                == .refuse(Refusal(code: .protocolViolation, message: "backup end before its start")))
        var twice = welcomed(.backup)
        _ = twice.frameReceived(.backupStart(backupStart))
        #expect(
            twice.frameReceived(.backupStart(backupStart))
                == .refuse(Refusal(code: .protocolViolation, message: "a second backup start on one link")))
        #expect(twice.state == .closed)
    }

    @Test func walOnABackupLinkIsRefused() {
        var m = welcomed(.backup)
        #expect(
            m.frameReceived(wal)
                == .refuse(Refusal(code: .protocolViolation, message: "unexpected walData frame on a backup link")))
        var refusing = welcomed(.backup)
        #expect(
            refusing.frameReceived(.refusal(Refusal(code: .shuttingDown, message: "bye")))
                == .refuse(Refusal(code: .protocolViolation, message: "unexpected refusal frame on a backup link")))
    }

    @Test func aVerdictLinkIsWelcomedWithoutClaimingTheStreamAndTakesVerdicts() {
        var m = machine()
        #expect(m.firstFrameReceived(hello(.verdict), certificateName: nil) == .openSpool(system: 42, segmentSize: .default))
        #expect(m.spoolOpened(fence: nil) == .findResumePoint(makeDurableFirst: false, acceptedFence: nil))
        guard case .welcome = m.resumePointFound(durable: LSN(0), timeline: 1) else {
            Issue.record("no welcome")
            return
        }
        let verdict = PrimaryVerdict(state: .lost, lastHeardAgeMillis: 3_000, droppedAgeMillis: 2_000, sentAt: .now())
        #expect(m.frameReceived(.primaryVerdict(verdict)) == .recordVerdict(verdict))
        #expect(m.frameReceived(.primaryVerdict(verdict)) == .recordVerdict(verdict), "several on one link")
        #expect(
            m.frameReceived(
                .keepalive(Keepalive(primaryEndLSN: LSN(5), sendTime: PostgresTimestamp(rawValue: 1), replyRequested: true)))
                == .keepalive(primaryEnd: nil, sendTime: PostgresTimestamp(rawValue: 1), sendAck: true),
            "a verdict link's keepalive says nothing of the primary's position")
        #expect(refusal(m.frameReceived(wal))?.message == "unexpected walData frame on a verdict link")
        #expect(m.state == .closed)
    }

    @Test func verdictsOnOtherLinksAndVerdictLinksOfVersion1AreRefused() {
        let verdict = ShipMessage.primaryVerdict(
            PrimaryVerdict(state: .alive, lastHeardAgeMillis: 0, droppedAgeMillis: nil, sentAt: .now()))
        var stream = welcomed(.stream)
        #expect(refusal(stream.frameReceived(verdict))?.code == .protocolViolation)
        var backup = welcomed(.backup)
        #expect(refusal(backup.frameReceived(verdict))?.code == .protocolViolation)
        var old = machine()
        #expect(
            refusal(old.firstFrameReceived(hello(.verdict, version: 1), certificateName: nil))?.message
                == "a verdict link needs ship protocol version 2, the sender speaks 1")
    }

    @Test func aFencedSystemRefusesVerdictLinks() {
        var m = machine()
        _ = m.firstFrameReceived(hello(.verdict), certificateName: nil)
        let answer = refusal(m.spoolOpened(fence: fence))
        #expect(answer?.code == .fenced)
        #expect(answer?.message.contains("a verdict on the primary from the old primary") == true)
    }

    // MARK: - The fence's lineage: the new primary passes, nothing else

    /// The DR replica left timeline 1 at 0/5000060 for timeline 2.
    var lineageFence: Machine.Fence {
        var fence = fence
        fence.lineage = PromotedLineage(
            timeline: 2,
            history: [TimelineHistoryEntry(parent: 1, switchPoint: LSN("0/5000060")!, reason: "no recovery target specified")])
        return fence
    }

    func helloOn(_ timeline: UInt32, _ role: LinkRole = .stream) -> ShipMessage {
        .hello(
            Hello(
                role: role, synchronous: true, systemIdentifier: 42, timeline: timeline,
                walSegmentSize: UInt32(WALSegmentSize.default.bytes), senderName: "new-primary"))
    }

    func historyFile(_ timeline: UInt32, _ text: String) -> ShipMessage {
        .history(HistoryFile(timeline: timeline, content: ByteBuffer(string: text)))
    }

    func walOn(_ timeline: UInt32) -> ShipMessage {
        .walData(
            WALData(
                timeline: timeline, startLSN: LSN("0/5000000")!, primaryEndLSN: LSN("0/5000005")!,
                primarySendTime: PostgresTimestamp(rawValue: 1), compression: .none, uncompressedLength: 5,
                payload: ByteBuffer(bytes: [1, 2, 3, 4, 5])))
    }

    /// A stream link on `timeline` through the lineage fence, welcomed.
    func throughTheFence(on timeline: UInt32) -> Machine {
        var m = machine()
        _ = m.firstFrameReceived(helloOn(timeline), certificateName: nil)
        #expect(m.spoolOpened(fence: lineageFence) == .claimStream(acceptedFence: nil))
        #expect(m.fenceCheck?.proven == [])
        _ = m.streamClaimed()
        _ = m.resumePointFound(durable: LSN("0/5000060")!, timeline: 1)
        return m
    }

    @Test func theNewPrimaryProvesItsTimelineAndItsWALPasses() {
        var m = throughTheFence(on: 2)
        guard case .history(let file) = historyFile(2, "1\t0/5000060\tno recovery target specified\n") else { return }
        #expect(m.frameReceived(.history(file)) == .queueHistory(file, admitsLink: true))
        guard case .walData(let data) = walOn(2) else { return }
        #expect(m.frameReceived(.walData(data)) == .queueWAL(data))
        // Proven once: the same file again is no second admission.
        #expect(m.frameReceived(.history(file)) == .queueHistory(file, admitsLink: false))
        let change = ModeChange(mode: .sync, lsn: LSN("0/5000100")!, observedAt: PostgresTimestamp(rawValue: 5))
        #expect(m.frameReceived(.mode(change)) == .recordMode(change))
    }

    @Test func aDescendantProvesEachTimelineItShips() {
        var m = throughTheFence(on: 3)
        guard case .history(let two) = historyFile(2, "1\t0/5000060\tno recovery target specified\n"),
            case .history(let three) = historyFile(3, "1\t0/5000060\tx\n2\t0/9000000\ty\n"),
            case .walData(let onTwo) = walOn(2), case .walData(let onThree) = walOn(3)
        else { return }
        #expect(m.frameReceived(.history(two)) == .queueHistory(two, admitsLink: true))
        #expect(m.frameReceived(.walData(onTwo)) == .queueWAL(onTwo))
        // Timeline 3's WAL needs timeline 3's history first.
        #expect(refusal(m.frameReceived(.walData(onThree)))?.code == .fenced)

        var n = throughTheFence(on: 3)
        _ = n.frameReceived(.history(two))
        #expect(n.frameReceived(.history(three)) == .queueHistory(three, admitsLink: false))
        #expect(n.frameReceived(.walData(onThree)) == .queueWAL(onThree))
    }

    @Test func aForeignTimelineOfTheSameNumberIsRefusedAtItsHistory() {
        var m = throughTheFence(on: 2)
        let answer = refusal(m.frameReceived(historyFile(2, "1\t0/4000028\tno recovery target specified\n")))
        #expect(answer?.code == .fenced)
        #expect(
            answer?.message.hasPrefix(
                "system 42 was promoted at the DR site at 2026-12-01T10:00:00Z (timeline 2); WAL from the old primary (sender new-primary, timeline 2) is refused: timeline 2 does not descend"
            ) == true, "\(answer?.message ?? "")")
        #expect(m.state == .closed)
    }

    @Test func nothingButHistoryPassesBeforeTheProof() {
        for frame in [
            walOn(2),
            .mode(ModeChange(mode: .sync, lsn: LSN("0/5000100")!, observedAt: PostgresTimestamp(rawValue: 5))),
            .keepalive(
                Keepalive(primaryEndLSN: LSN("0/5000100")!, sendTime: PostgresTimestamp(rawValue: 1), replyRequested: true)),
        ] {
            var m = throughTheFence(on: 2)
            let answer = refusal(m.frameReceived(frame))
            #expect(answer?.code == .fenced, "\(frame.kind)")
            #expect(m.state == .closed)
        }
        // WAL of the fenced timeline, even after the proof: the old timeline's WAL never lands again.
        var m = throughTheFence(on: 2)
        _ = m.frameReceived(historyFile(2, "1\t0/5000060\tno recovery target specified\n"))
        #expect(refusal(m.frameReceived(walOn(1)))?.code == .fenced)
        // A history file that does not parse proves nothing.
        var garbled = throughTheFence(on: 2)
        #expect(refusal(garbled.frameReceived(historyFile(2, "not a history")))?.code == .fenced)
    }

    @Test func theFencedTimelineIsRefusedAtTheHandshakeWithTheReason() {
        var m = machine()
        _ = m.firstFrameReceived(helloOn(1), certificateName: nil)
        let answer = refusal(m.spoolOpened(fence: lineageFence))
        #expect(answer?.code == .fenced)
        #expect(
            answer?.message.contains("is refused: timeline 1 is the fenced timeline. Hint:") == true, "\(answer?.message ?? "")")
        #expect(m.fenceCheck == nil)
    }

    /// A backup of the new primary passes once its history file proved its timeline; without that proof, or with
    /// a foreign one, its start is refused. The history file is proof only: the stream stores it, not this link.
    @Test func backupLinksOfTheNewPrimaryPassWithTheirHistoryAndVerdictsAreTaken() {
        func backupThroughTheFence() -> Machine {
            var backup = machine()
            _ = backup.firstFrameReceived(helloOn(2, .backup), certificateName: nil)
            #expect(backup.spoolOpened(fence: lineageFence) == .findResumePoint(makeDurableFirst: false, acceptedFence: nil))
            _ = backup.resumePointFound(durable: LSN("0/5000060")!, timeline: 2)
            return backup
        }
        let onTwo = BackupStart(startLSN: LSN("0/6000028")!, timeline: 2, estimatedBytes: 0, label: "unit")
        var proven = backupThroughTheFence()
        #expect(proven.frameReceived(historyFile(2, "1\t0/5000060\tno recovery target specified\n")) == .none)
        #expect(proven.frameReceived(.backupStart(onTwo)) == .beginBackup(onTwo))

        var unproven = backupThroughTheFence()
        let answer = refusal(unproven.frameReceived(.backupStart(onTwo)))
        #expect(answer?.code == .fenced)
        #expect(
            answer?.message.contains("the backup of timeline 2 started without a history file proving it descends") == true,
            "\(answer?.message ?? "")")

        var foreign = backupThroughTheFence()
        #expect(refusal(foreign.frameReceived(historyFile(2, "1\t0/4000028\tx\n")))?.code == .fenced)

        // A history file after the start is out of order; on an unfenced system it is taken and ignored.
        #expect(refusal(proven.frameReceived(historyFile(2, "1\t0/5000060\tx\n")))?.code == .protocolViolation)
        var unfenced = welcomed(.backup)
        #expect(unfenced.frameReceived(historyFile(2, "1\t0/5000060\tx\n")) == .none)
        #expect(unfenced.frameReceived(.backupStart(backupStart)) == .beginBackup(backupStart))

        var verdicts = machine()
        _ = verdicts.firstFrameReceived(helloOn(2, .verdict), certificateName: nil)
        #expect(verdicts.spoolOpened(fence: lineageFence) == .findResumePoint(makeDurableFirst: false, acceptedFence: nil))
        // The old primary's backups and verdicts stay refused.
        var oldBackup = machine()
        _ = oldBackup.firstFrameReceived(helloOn(1, .backup), certificateName: nil)
        #expect(refusal(oldBackup.spoolOpened(fence: lineageFence))?.code == .fenced)
        var old = machine()
        _ = old.firstFrameReceived(helloOn(1, .verdict), certificateName: nil)
        #expect(refusal(old.spoolOpened(fence: lineageFence))?.code == .fenced)
    }

    @Test func aFenceWithoutALineageRefusesTheNewPrimaryToo() {
        var m = machine()
        _ = m.firstFrameReceived(helloOn(2), certificateName: nil)
        #expect(
            m.spoolOpened(fence: fence)
                == .refuse(
                    Refusal(
                        code: .fenced,
                        message:
                            "system 42 was promoted at the DR site at 2026-12-01T10:00:00Z (timeline 2); WAL from the old primary (sender new-primary, timeline 2) is refused. Hint: re-seed the DR site and remove /spool/42/FENCED, or restart walship receive with --force to accept it anyway"
                    )))
    }

    @Test func forceStillAcceptsAnythingWithoutChecks() {
        var m = machine(acceptFenced: true)
        _ = m.firstFrameReceived(helloOn(1), certificateName: nil)
        #expect(m.spoolOpened(fence: lineageFence) == .claimStream(acceptedFence: lineageFence))
        #expect(m.fenceCheck == nil)
    }
}

@Suite struct ControlSocketTests {
    @Test func readinessIsAnsweredInOneLineOfJSONAndAnythingElseIsAnError() throws {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let report = ReadinessReport.assess(
            systemIdentifier: "7", source: "receiver", now: now, linkConnected: true, linkLastFrameAt: now,
            linkSilentSince: nil, primaryLastHeardAt: now, linkTimeoutSeconds: 30, receiverLoss: "block",
            senderProtocolVersion: 2, verdict: nil, mode: "sync", modeSince: now)
        let answer = ControlSocket.answer("readiness\r", readiness: { report })
        #expect(!answer.contains("\n"))
        #expect(try StatusDocument.decoder().decode(ReadinessReport.self, from: Data(answer.utf8)) == report)
        #expect(ControlSocket.answer("promote", readiness: { report }).contains(#""error""#))
    }

    @Test func standbysAreAnsweredWithTheNamesTheirRecordsAreKeptUnder() throws {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let report = ReadinessReport.assess(
            systemIdentifier: "7", source: "receiver", now: now, linkConnected: true, linkLastFrameAt: now,
            linkSilentSince: nil, primaryLastHeardAt: now, linkTimeoutSeconds: 30, receiverLoss: "block",
            senderProtocolVersion: 2, verdict: nil, mode: "sync", modeSince: now)
        let present = [StandbyPresence(name: "dr_slot", applicationName: "dr_replica", connected: true)]
        let answer = ControlSocket.answer("standbys\n", readiness: { report }, standbys: { present })
        #expect(!answer.contains("\n"))
        #expect(try StatusDocument.decoder().decode([StandbyPresence].self, from: Data(answer.utf8)) == present)
        #expect(ControlSocket.answer("forget", readiness: { report }).contains("ask \\\"readiness\\\" or \\\"standbys\\\""))
    }
}
