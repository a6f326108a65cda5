import Testing
import WALCore

@testable import Archive

@Suite struct ArchivePrefetchTests {
    static let mib16 = WALSegmentSize.default
    static func segment(_ text: String, size: WALSegmentSize = mib16) -> SegmentName { SegmentName(text, segmentSize: size)! }

    @Test func theNextSegmentsOfTheSameTimelineAreFetched() {
        let names = ArchivePrefetch.names(after: Self.segment("000000010000000A000000FD"), count: 4, history: [])
        // 16 MiB segments: 256 to a middle part, so FF is followed by the next middle part's 00.
        #expect(
            names.map(\.description) == [
                "000000010000000A000000FE", "000000010000000A000000FF", "000000010000000B00000000",
                "000000010000000B00000001",
            ])
        #expect(ArchivePrefetch.names(after: Self.segment("000000010000000A000000FD"), count: 0, history: []).isEmpty)
    }

    @Test func theSegmentSizeFromTheFileDrivesTheNames() throws {
        // 1 GiB segments: four to a middle part, the last low part is 3.
        let gib = try #require(WALSegmentSize(bytes: 1 << 30))
        let names = ArchivePrefetch.names(after: Self.segment("000000010000000200000002", size: gib), count: 3, history: [])
        #expect(names.map(\.description) == ["000000010000000200000003", "000000010000000300000000", "000000010000000300000001"])
        let mib64 = try #require(WALSegmentSize(bytes: 64 << 20))
        let after = ArchivePrefetch.names(after: Self.segment("00000001000000000000003F", size: mib64), count: 1, history: [])
        #expect(after.map(\.description) == ["000000010000000100000000"])
    }

    @Test func aTimelineSwitchStopsThePrefetch() throws {
        // Timeline 1 ended at 0/5123456: segment 5 is read under timeline 2's name, so timeline 1 stops at 4.
        let history = try parseTimelineHistory("1\t0/5123456\tno recovery target specified\n")
        let names = ArchivePrefetch.names(after: Self.segment("000000010000000000000002"), count: 8, history: history)
        #expect(names.map(\.description) == ["000000010000000000000003", "000000010000000000000004"])
        // A switch point on a segment boundary: that segment is the new timeline's too.
        let aligned = try parseTimelineHistory("1\t0/4000000\tx\n")
        #expect(
            ArchivePrefetch.names(after: Self.segment("000000010000000000000002"), count: 8, history: aligned).map(\.description)
                == ["000000010000000000000003"])
        // Asked for at the switch: nothing more of the old timeline.
        #expect(ArchivePrefetch.names(after: Self.segment("000000010000000000000004"), count: 8, history: history).isEmpty)
        // The newest timeline has no end: the whole window.
        let onTwo = ArchivePrefetch.names(after: Self.segment("000000020000000000000005"), count: 8, history: history)
        #expect(onTwo.count == 8 && onTwo.allSatisfy { $0.timeline == 2 })
    }

    @Test func evictionDropsWhatReplayMovedPastAndKeepsTheWindow() {
        let cached = [
            "000000010000000000000003", "000000010000000000000005", "000000010000000000000006",
            "00000001000000000000000D", "000000010000000000000010", "junk", ".000000010000000000000007.123.9",
        ]
        let evicted = ArchivePrefetch.evictions(
            cached: cached, requested: Self.segment("000000010000000000000005"), window: 8)
        // Before or at the requested one, beyond 5 + 8 = 0D, and strays go; a file being written stays.
        #expect(evicted == ["000000010000000000000003", "000000010000000000000005", "000000010000000000000010", "junk"])
        // After a switch to timeline 2 the old timeline's segments are not asked for again.
        let switched = ArchivePrefetch.evictions(
            cached: ["000000010000000000000006", "000000020000000000000006"], requested: Self.segment("000000020000000000000005"),
            window: 8)
        #expect(switched == ["000000010000000000000006"])
    }
}
