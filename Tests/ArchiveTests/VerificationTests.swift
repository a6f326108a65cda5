import ArchiveCrypto
import Foundation
import LZ4Codec
import StatusModel
import Testing
import WALCore
import WALTestSupport

@testable import Archive

@Suite struct VerificationTests {
    static let system = TestWAL.sysid
    static let here = "s3://b/p/\(TestWAL.sysid)/"

    static func name(_ number: UInt64, timeline: TimeLineID = 1) -> String {
        SegmentName(timeline: timeline, number: number, segmentSize: TestWAL.size).description
    }

    static func lz4(_ bytes: [UInt8]) -> Data { Data(bytes.withUnsafeBytes { LZ4.compressFrame($0) }) }

    static func frame(_ number: UInt64) -> Data { Self.lz4(TestWAL.segment(number)) }

    /// Feeds segments (by number, on `timeline`) as plain objects.
    static func feed(_ ledger: inout VerifyLedger, _ numbers: [UInt64], timeline: TimeLineID = 1) {
        for number in numbers {
            let file = name(number, timeline: timeline) + ".lz4"
            let plain = ledger.open(frame(number), system: system, path: "wal/" + file, location: here + "wal/" + file)
            ledger.walFile(file, system: system, location: here + "wal/" + file, plain: plain)
        }
    }

    static func ledger() -> VerifyLedger {
        var ledger = VerifyLedger(origin: "archive s3://b/p", keyring: nil)
        ledger.setWALLocation(here + "wal/", system: system)
        return ledger
    }

    @Test func wholeConsecutiveSegmentsAreClean() {
        var ledger = Self.ledger()
        Self.feed(&ledger, [1, 2, 3])
        let report = ledger.finish()
        #expect(report.problems.isEmpty, "\(report.problems.map(\.line))")
        #expect(report.code == .ok)
        #expect(report.objectsRead == 3)
        #expect(
            report.timelines == [.init(system: Self.system, timeline: 1, first: Self.name(1), last: Self.name(3), segments: 3)])
        #expect(report.summary.hasPrefix("OK: archive s3://b/p: 3 objects read"), "\(report.summary)")
        #expect(report.summary.contains("not encrypted"))
    }

    @Test func aFlippedByteInASegmentIsCriticalAndNamesTheObject() {
        var frame = Self.frame(2)
        frame[frame.count / 2] ^= 0x01
        let location = Self.here + "wal/" + Self.name(2) + ".lz4"
        let result = VerifyLedger.checkSegment(name: Self.name(2), frame: frame, system: Self.system, segmentSize: nil)
        guard case .failure(let finding) = result else {
            Issue.record("a flipped byte passed")
            return
        }
        #expect(finding.severity == .critical)
        #expect(finding.problem.contains("LZ4"), "\(finding.problem)")

        var ledger = Self.ledger()
        Self.feed(&ledger, [1, 3])
        ledger.walFile(Self.name(2) + ".lz4", system: Self.system, location: location, plain: frame)
        let report = ledger.finish()
        #expect(report.code == .critical)
        #expect(report.problems.map(\.location) == [location], "\(report.problems.map(\.line))")
        #expect(report.problems[0].line.hasPrefix("CRITICAL \(location): "))
    }

    @Test func aTruncatedFrameIsCritical() {
        let frame = Self.frame(1)
        for cut in [frame.count - 1, frame.count - 4, frame.count / 2, 7] {
            let result = VerifyLedger.checkSegment(
                name: Self.name(1), frame: frame.prefix(cut), system: Self.system, segmentSize: nil)
            guard case .failure(let finding) = result else {
                Issue.record("a frame cut at \(cut) of \(frame.count) passed")
                continue
            }
            #expect(finding.severity == .critical)
        }
    }

    @Test func aSegmentUnderAnotherNameFailsItsPageAddress() {
        // Segment 2's bytes stored as segment 3: every page claims an address one segment too low.
        let result = VerifyLedger.checkSegment(name: Self.name(3), frame: Self.frame(2), system: Self.system, segmentSize: nil)
        guard case .failure(let finding) = result else {
            Issue.record("a misplaced segment passed")
            return
        }
        #expect(finding.problem.contains("claims address"), "\(finding.problem)")
        // And another system's segment: its long header names that system.
        let foreign = Self.lz4(TestWAL.segment(3, systemIdentifier: 42))
        guard
            case .failure(let other) = VerifyLedger.checkSegment(
                name: Self.name(3), frame: foreign, system: Self.system, segmentSize: nil)
        else {
            Issue.record("another system's segment passed")
            return
        }
        #expect(other.problem.contains("belongs to system 42"), "\(other.problem)")
    }

    @Test func aSegmentOfTheWrongSizeIsCritical() {
        let short = Self.lz4(Array(TestWAL.segment(1).prefix(1 << 19)))
        guard
            case .failure(let finding) = VerifyLedger.checkSegment(
                name: Self.name(1), frame: short, system: Self.system, segmentSize: nil)
        else {
            Issue.record("half a segment passed")
            return
        }
        #expect(finding.problem.contains("not a WAL segment"))
        guard
            case .failure(let other) = VerifyLedger.checkSegment(
                name: Self.name(1), frame: Self.frame(1), system: Self.system, segmentSize: .default)
        else {
            Issue.record("a 1 MiB segment in a 16 MiB system passed")
            return
        }
        #expect(other.problem.contains("16MB"), "\(other.problem)")
    }

    @Test func aGapIsNamed() {
        var ledger = Self.ledger()
        Self.feed(&ledger, [1, 2, 4, 5, 9])
        let problems = ledger.finish().problems
        #expect(problems.count == 2, "\(problems.map(\.line))")
        #expect(problems.allSatisfy { $0.severity == .critical && $0.location == Self.here + "wal/" })
        #expect(problems[0].problem.contains("segment \(Self.name(3)) is missing"), "\(problems[0].problem)")
        #expect(problems[1].problem.contains("3 segments \(Self.name(6))…\(Self.name(8))"), "\(problems[1].problem)")
    }

    static func history(_ ledger: inout VerifyLedger, timeline: TimeLineID, text: String) {
        let file = historyFileName(timeline: timeline)
        let plain = ledger.open(Data(text.utf8), system: system, path: "wal/" + file, location: here + "wal/" + file)
        ledger.walFile(file, system: system, location: here + "wal/" + file, plain: plain)
    }

    @Test func aTimelineWithoutItsHistoryFileIsCritical() {
        var ledger = Self.ledger()
        Self.feed(&ledger, [1, 2, 3])
        Self.feed(&ledger, [3, 4], timeline: 2)
        let problems = ledger.finish().problems
        #expect(problems.count == 1, "\(problems.map(\.line))")
        #expect(problems.first?.problem.contains("timeline 2 has WAL but no history file 00000002.history") == true)

        // With it (the switch inside segment 3), clean.
        var whole = Self.ledger()
        Self.feed(&whole, [1, 2, 3])
        Self.feed(&whole, [3, 4], timeline: 2)
        Self.history(&whole, timeline: 2, text: "1\t0/300100\tno recovery target specified\n")
        let report = whole.finish()
        #expect(report.problems.isEmpty, "\(report.problems.map(\.line))")
        #expect(report.timelines.map(\.timeline) == [1, 2])
    }

    @Test func aSwitchWithWALMissingOnEitherSideIsAGap() {
        var ledger = Self.ledger()
        // The switch is in segment 6: timeline 1 must reach 5, timeline 2 must start at 6.
        Self.feed(&ledger, [1, 2, 3])
        Self.feed(&ledger, [7, 8], timeline: 2)
        Self.history(&ledger, timeline: 2, text: "1\t0/600100\tbefore 2026-12-08\n")
        let problems = ledger.finish().problems.map(\.problem)
        #expect(problems.count == 2, "\(problems)")
        #expect(problems.contains { $0.contains("timeline 2 begins at 0/600100") && $0.contains(Self.name(7, timeline: 2)) })
        #expect(problems.contains { $0.contains("timeline 1 ends at \(Self.name(3))") && $0.contains(Self.name(4)) })
    }

    @Test func aDamagedHistoryFileIsCritical() {
        var ledger = Self.ledger()
        Self.history(&ledger, timeline: 3, text: "this is not a history file\n")
        Self.history(&ledger, timeline: 2, text: "5\t0/300100\tparent above the child\n")
        let problems = ledger.finish().problems
        #expect(problems.count == 2, "\(problems.map(\.line))")
        #expect(problems.allSatisfy { $0.severity == .critical })
    }

    static func keyring() -> Keyring { Keyring.generate() }

    static func seal(_ number: UInt64, keyring: Keyring) -> (file: String, sealed: Data) {
        let file = name(number) + ".lz4"
        return (
            file, try! SealedObject.seal(frame(number), binding: .init(system: system, name: "wal/" + file), keyring: keyring)
        )
    }

    @Test func sealedObjectsOpenAndTheirKeyIDsAreCounted() {
        var keyring = Self.keyring()
        let first = keyring.currentID
        let old = [1, 2].map { Self.seal($0, keyring: keyring) }
        _ = keyring.rotate()
        let new = [3].map { Self.seal($0, keyring: keyring) }
        var ledger = VerifyLedger(origin: "archive s3://b/p", keyring: keyring)
        for (file, sealed) in old + new {
            let plain = ledger.open(sealed, system: Self.system, path: "wal/" + file, location: Self.here + "wal/" + file)
            #expect(plain != nil)
            ledger.walFile(file, system: Self.system, location: Self.here + "wal/" + file, plain: plain)
        }
        let report = ledger.finish()
        #expect(report.code == .ok, "\(report.problems.map(\.line))")
        #expect(report.keyUse == [first: 2, keyring.currentID: 1])
        #expect(report.summary.contains("key ids in use: "), "\(report.summary)")
        #expect(report.summary.contains("\(first) (2 objects)") && report.summary.contains("\(keyring.currentID) (1 object)"))
    }

    @Test func aWrongKeyIsCriticalAndNamesTheKeyID() {
        let sealing = Self.keyring()
        let (file, sealed) = Self.seal(1, keyring: sealing)
        var ledger = VerifyLedger(origin: "archive s3://b/p", keyring: Self.keyring())
        #expect(ledger.open(sealed, system: Self.system, path: "wal/" + file, location: "here") == nil)
        let problems = ledger.finish().problems
        #expect(problems.count == 1)
        #expect(problems.first?.severity == .critical)
        #expect(problems.first?.problem.contains("cannot be decrypted") == true)
        #expect(problems.first?.problem.contains(sealing.currentID) == true, "\(problems.map(\.line))")
        #expect(problems.first?.hint.contains(sealing.currentID) == true)
    }

    @Test func aFlippedByteInASealedObjectIsDamage() {
        let keyring = Self.keyring()
        let (file, original) = Self.seal(1, keyring: keyring)
        var sealed = original
        sealed[sealed.count - 100] ^= 0x80
        var ledger = VerifyLedger(origin: "archive s3://b/p", keyring: keyring)
        #expect(ledger.open(sealed, system: Self.system, path: "wal/" + file, location: "here") == nil)
        let problems = ledger.finish().problems
        #expect(problems.map(\.severity) == [.critical])
        #expect(problems.first?.problem.contains("is damaged") == true, "\(problems.map(\.line))")
        // Moved to another name, it does not open either.
        var moved = VerifyLedger(origin: "archive s3://b/p", keyring: keyring)
        let (_, other) = Self.seal(2, keyring: keyring)
        #expect(moved.open(other, system: Self.system, path: "wal/" + file, location: "here") == nil)
        #expect(moved.finish().code == .critical)
    }

    @Test func unencryptedObjectsBesideSealedOnesAreAWarning() {
        let keyring = Self.keyring()
        var ledger = VerifyLedger(origin: "archive s3://b/p", keyring: keyring)
        ledger.setWALLocation(Self.here + "wal/", system: Self.system)
        Self.feed(&ledger, [1])
        let (file, sealed) = Self.seal(2, keyring: keyring)
        let plain = ledger.open(sealed, system: Self.system, path: "wal/" + file, location: Self.here + "wal/" + file)
        ledger.walFile(file, system: Self.system, location: Self.here + "wal/" + file, plain: plain)
        let report = ledger.finish()
        #expect(report.code == .warning, "\(report.problems.map(\.line))")
        #expect(report.problems.first?.location == Self.here + "wal/" + Self.name(1) + ".lz4")
        #expect(report.summary.contains("1 objects not encrypted"), "\(report.summary)")
    }

    @Test func sealedObjectsWithoutAKeyringAreUnknown() {
        let (file, sealed) = Self.seal(1, keyring: Self.keyring())
        var ledger = Self.ledger()
        let plain = ledger.open(sealed, system: Self.system, path: "wal/" + file, location: "here")
        #expect(plain == nil)
        ledger.walFile(file, system: Self.system, location: "here", plain: plain)
        let report = ledger.finish()
        #expect(report.code == .unknown)
        #expect(report.problems.first?.hint.contains("--encryption-keyring") == true)
    }

    @Test func aStoredChecksumThatDoesNotMatchIsCritical() {
        let body = Data("hello".utf8)
        #expect(VerifyLedger.storedChecksumProblem(body, etag: "5d41402abc4b2a76b9719d911017c592", sha256: nil) == nil)
        #expect(VerifyLedger.storedChecksumProblem(body, etag: "00000000000000000000000000000000", sha256: nil) != nil)
        // A multipart ETag is no checksum of the bytes; the SHA-256 metadata is.
        #expect(VerifyLedger.storedChecksumProblem(body, etag: "abc-3", sha256: nil) == nil)
        #expect(
            VerifyLedger.storedChecksumProblem(
                body, etag: "abc-3", sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824") == nil)
        #expect(VerifyLedger.storedChecksumProblem(body, etag: nil, sha256: String(repeating: "0", count: 64)) != nil)
        var ledger = Self.ledger()
        #expect(ledger.open(body, system: Self.system, path: "wal/x", location: "here", etag: "ffff") == nil)
        #expect(ledger.finish().code == .critical)
    }

    // MARK: Backups

    static func backupRecord(
        id: String = "20261208T001500Z", content: [UInt8], crc: String? = nil, start: String = "0/200028",
        stop: String = "0/300100", status: String = "complete", system: UInt64 = system
    ) -> Data {
        let crc32c = crc ?? content.withUnsafeBytes { String(CRC32C.update(0, $0), radix: 16) }
        return Data(
            """
            {"id": "\(id)", "label": "t", "systemIdentifier": "\(system)", "createdAt": "2026-12-08T00:15:00Z",
             "startLSN": "\(start)", "stopLSN": "\(stop)", "timeline": 1, "archiveBytes": \(content.count),
             "archiveCRC32C": "\(crc32c)", "storedBytes": 0, "status": "\(status)"}
            """.utf8)
    }

    static let content = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }

    @Test func aWholeBackupWithItsWALIsClean() {
        var ledger = Self.ledger()
        Self.feed(&ledger, [2, 3])
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: Self.here + "base/20261208T001500Z/",
            record: Self.backupRecord(content: Self.content), archive: .frame(Self.lz4(Self.content)),
            manifestPresent: true)
        let report = ledger.finish()
        #expect(report.problems.isEmpty, "\(report.problems.map(\.line))")
        #expect(report.backups == 1)
    }

    @Test func aBackupArchiveOtherThanItsRecordIsCritical() {
        let frame = Self.lz4(Self.content)
        let right = Self.backupRecord(content: Self.content)
        let info = try! JSONDecoder().decode(Probe.self, from: right)
        #expect(info.archiveBytes == UInt64(Self.content.count))
        var ledger = Self.ledger()
        Self.feed(&ledger, [2, 3])
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: "b1/",
            record: Self.backupRecord(content: Self.content, crc: "12345678"), archive: .frame(frame), manifestPresent: true)
        var flipped = frame
        flipped[flipped.count / 2] ^= 0x04
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: "b2/", record: right, archive: .frame(flipped),
            manifestPresent: true)
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: "b3/", record: right,
            archive: .frame(frame.prefix(frame.count - 10)), manifestPresent: true)
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: "b4/", record: right, archive: .missing,
            manifestPresent: false)
        let report = ledger.finish()
        #expect(report.code == .critical)
        #expect(report.backups == 0)
        let lines = report.problems.map(\.line)
        #expect(
            report.problems.map(\.location) == ["b1/base.tar.lz4", "b2/base.tar.lz4", "b3/base.tar.lz4", "b4/", "b4/"], "\(lines)"
        )
        #expect(lines[0].contains("expected CRC-32C 12345678"), "\(lines[0])")
    }

    struct Probe: Decodable { var archiveBytes: UInt64 }

    @Test func anIncompleteBackupIsAWarning() {
        var ledger = Self.ledger()
        Self.feed(&ledger, [2, 3])
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: "b/", record: nil, archive: .frame(Data()),
            manifestPresent: true)
        ledger.backup(
            id: "20261208T001600Z", system: Self.system, location: "c/",
            record: Self.backupRecord(id: "20261208T001600Z", content: Self.content, status: "waiting-for-wal"),
            archive: .checked(problem: nil), manifestPresent: true)
        let report = ledger.finish()
        #expect(report.code == .warning, "\(report.problems.map(\.line))")
        #expect(report.problems.count == 2)
        #expect(report.problems.allSatisfy { $0.problem.contains("incomplete") })
    }

    @Test func aBackupWhoseWALIsMissingIsCritical() {
        var ledger = Self.ledger()
        // The backup runs from segment 2 to segment 4; the archive holds 3 and 4 only.
        Self.feed(&ledger, [3, 4])
        ledger.backup(
            id: "20261208T001500Z", system: Self.system, location: "b/",
            record: Self.backupRecord(content: Self.content, stop: "0/400100"), archive: .checked(problem: nil),
            manifestPresent: true)
        let report = ledger.finish()
        #expect(report.code == .critical)
        #expect(report.problems.count == 1, "\(report.problems.map(\.line))")
        #expect(report.problems.first?.problem.contains("segment \(Self.name(2)) is") == true, "\(report.problems.map(\.line))")
        // A record copied from another system does not pass either.
        var other = Self.ledger()
        other.backup(
            id: "20261208T001500Z", system: Self.system, location: "b/",
            record: Self.backupRecord(content: Self.content, system: 42), archive: .checked(problem: nil), manifestPresent: true)
        #expect(other.finish().problems.first?.problem.contains("of system 42") == true)
    }

    @Test func theWorstProblemDecidesTheCode() {
        var ledger = Self.ledger()
        ledger.report(VerifyProblem(.warning, "a", "w", hint: "h"))
        #expect(ledger.finish().code == .warning)
        ledger.report(VerifyProblem(.unknown, "b", "u", hint: "h"))
        #expect(ledger.finish().code == .unknown)
        ledger.report(VerifyProblem(.critical, "c", "c", hint: "h"))
        #expect(ledger.finish().code == .critical)
    }
}
