import Foundation
import Testing

@testable import WALCore

@Suite struct LSNTests {
    @Test func parsesAndPrintsLikePostgres() {
        #expect(LSN("0/3B431C8")?.rawValue == 0x3B4_31C8)
        #expect(LSN("1/A0000000")?.rawValue == 0x1_A000_0000)
        #expect(LSN(0x1_A000_0000).description == "1/A0000000")
        #expect(LSN(0).description == "0/0")
        #expect(LSN("FFFFFFFF/FFFFFFFF")?.rawValue == .max)
    }

    @Test(arguments: ["", "0", "/", "0/", "/0", "0/0/0", "g/0", "123456789/0", "0/123456789", " 0/1"])
    func rejectsMalformed(_ text: String) {
        #expect(LSN(text) == nil)
    }

    @Test func distanceNeverNegative() {
        #expect(LSN(100).bytesAfter(LSN(40)) == 60)
        #expect(LSN(40).bytesAfter(LSN(100)) == 0)
    }
}

@Suite struct SegmentTests {
    let size = WALSegmentSize.default

    @Test func namesMatchPostgres() {
        let name = SegmentName(timeline: 1, containing: LSN("0/3B431C8")!, segmentSize: size)
        #expect(name.description == "000000010000000000000003")
        #expect(size.offset(of: LSN("0/3B431C8")!) == 0xB4_31C8)
        #expect(
            SegmentName(timeline: 2, containing: LSN("1/A0000000")!, segmentSize: size).description == "0000000200000001000000A0")
        #expect(SegmentName(timeline: 1, number: 0x100, segmentSize: size).description == "000000010000000100000000")
    }

    @Test func parsesNamesBack() throws {
        let name = try #require(SegmentName("0000000200000001000000A0", segmentSize: size))
        #expect(name.timeline == 2)
        #expect(name.startLSN == LSN("1/A0000000")!)
        #expect(name.endLSN == LSN("1/A1000000")!)
        #expect(name.next().description == "0000000200000001000000A1")
    }

    @Test(arguments: [
        "00000001000000000000000", "000000010000000000000003.partial", "0000000100000000000001ZZ",
        "000000010000000000000100", "000000000000000000000001", "00000001000000000000000a",
    ])
    func rejectsOtherNames(_ text: String) {
        #expect(SegmentName(text, segmentSize: size) == nil)
    }

    @Test func otherSegmentSizes() throws {
        let oneGiB = try #require(WALSegmentSize(bytes: 1 << 30))
        #expect(
            SegmentName(timeline: 1, containing: LSN("1/40000000")!, segmentSize: oneGiB).description
                == "000000010000000100000001")
        #expect(WALSegmentSize(bytes: 3 << 20) == nil)
        #expect(WALSegmentSize(bytes: 1 << 19) == nil)
        #expect(WALSegmentSize(showValue: "16MB") == .default)
        #expect(WALSegmentSize(showValue: "1GB")?.bytes == 1 << 30)
        #expect(WALSegmentSize(showValue: "16XB") == nil)
        #expect(WALSegmentSize(showValue: "MB") == nil)
    }

    @Test func historyNames() {
        #expect(historyFileName(timeline: 2) == "00000002.history")
        #expect(timeline(ofHistoryFileName: "0000000A.history") == 10)
        #expect(timeline(ofHistoryFileName: "00000001.history") == nil)
        #expect(timeline(ofHistoryFileName: "0000000a.history") == nil)
    }
}

@Suite struct CRCAndTimeTests {
    @Test func crc32cKnownVectors() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        let long = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        // Incremental and one-shot agree across the 8-byte fast path boundary.
        let split = long.withUnsafeBytes { raw in
            CRC32C.update(
                CRC32C.update(0, UnsafeRawBufferPointer(rebasing: raw[0..<13])),
                UnsafeRawBufferPointer(rebasing: raw[13...]))
        }
        #expect(split == CRC32C.checksum(long))
    }

    @Test func crc32cMatchesTheBitwiseDefinitionAtEveryLengthAndAlignment() {
        func bitwise(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            }
            return ~crc
        }
        let data = (0..<80).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
        for start in 0..<8 {
            for end in start...data.count {
                #expect(CRC32C.checksum(data[start..<end]) == bitwise(data[start..<end]))
                let table = data[start..<end].withUnsafeBytes { CRC32C.softwareUpdate(0, $0.baseAddress!, $0.count) }
                #expect(table == bitwise(data[start..<end]))
            }
        }
    }

    @Test func theCPUInstructionIsUsedWhereTheMachineHasIt() throws {
        // Guards against a build that silently falls back to the table on the machines we measure on.
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        if flags.contains(" sse4_2") || flags.contains(" crc32") {
            #expect(CRC32C.usesHardware)
        }
    }

    @Test func postgresEpoch() {
        #expect(PostgresTimestamp(unixMicroseconds: 946_684_800_000_000).rawValue == 0)
        let a = PostgresTimestamp(rawValue: 5_000_000)
        #expect(a.seconds(since: PostgresTimestamp(rawValue: 2_000_000)) == 3)
        #expect(PostgresTimestamp(rawValue: 2_000_000).seconds(since: a) == 0)
    }
}

@Suite struct TimelineHistoryTests {
    @Test func parsesPostgresFormat() throws {
        let entries = try parseTimelineHistory(
            "1\t0/5000060\tno recovery target specified\n\n# comment\n2\t0/7000000\tbefore 2026-01-01\n")
        #expect(
            entries == [
                TimelineHistoryEntry(parent: 1, switchPoint: LSN("0/5000060")!, reason: "no recovery target specified"),
                TimelineHistoryEntry(parent: 2, switchPoint: LSN("0/7000000")!, reason: "before 2026-01-01"),
            ])
    }

    @Test func rejectsMalformedAndDescending() {
        #expect(throws: TimelineHistoryError.malformedLine(1, "x\t0/1")) { try parseTimelineHistory("x\t0/1") }
        #expect(throws: TimelineHistoryError.malformedLine(1, "1\tnot-an-lsn\tr")) {
            try parseTimelineHistory("1\tnot-an-lsn\tr")
        }
        #expect(throws: TimelineHistoryError.notAscending(line: 2)) { try parseTimelineHistory("2\t0/1\ta\n1\t0/2\tb\n") }
    }
}
