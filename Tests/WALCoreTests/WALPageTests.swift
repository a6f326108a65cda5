import Testing

@testable import WALCore

/// Builds WAL pages with valid headers (little-endian, as a PostgreSQL 15 primary on x86-64 writes them).
enum SyntheticWAL {
    static func header(
        at address: LSN, timeline: TimeLineID = 1, systemIdentifier: UInt64 = 7_711_355_351_252_201_643,
        segmentSize: WALSegmentSize = .default, magic: UInt16 = WALPage.magic
    ) -> [UInt8] {
        let long = segmentSize.offset(of: address) == 0
        var out: [UInt8] = []
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        le(magic)
        le(UInt16(long ? 0x0002 : 0x0000))
        le(timeline)
        le(address.rawValue)
        le(UInt32(0))
        le(UInt32(0))
        if long {
            le(systemIdentifier)
            le(UInt32(segmentSize.bytes))
            le(UInt32(8192))
        }
        return out
    }

    /// `count` bytes of a segment: valid page headers, pseudo-random record bytes in between.
    static func segment(
        number: UInt64, count: Int, timeline: TimeLineID = 1, systemIdentifier: UInt64 = 7_711_355_351_252_201_643,
        segmentSize: WALSegmentSize
    ) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var seed = UInt32(truncatingIfNeeded: number &* 2_654_435_761)
        for i in 0..<count {
            seed = seed &* 1_664_525 &+ 1_013_904_223
            bytes[i] = UInt8(truncatingIfNeeded: seed >> 24)
        }
        var page = 0
        while page < count {
            let h = header(
                at: segmentSize.startLSN(ofSegment: number).advanced(by: UInt64(page)), timeline: timeline,
                systemIdentifier: systemIdentifier, segmentSize: segmentSize)
            for (i, b) in h.enumerated() where page + i < count { bytes[page + i] = b }
            page += 8192
        }
        return bytes
    }
}

@Suite struct WALPageTests {
    let size = WALSegmentSize.default
    let sysid: UInt64 = 7_711_355_351_252_201_643

    func validate(_ header: [UInt8], at address: LSN, timeline: TimeLineID = 1) throws {
        var v = WALPageValidator(systemIdentifier: sysid, segmentSize: size, timeline: timeline)
        try header.withUnsafeBytes { raw in try v.validate(header: raw, pageAddress: address) }
    }

    @Test func acceptsObservedHeader() throws {
        // The first 40 bytes of 000000010000000000000003 as PostgreSQL 15.18 wrote them.
        let observed: [UInt8] = [
            0x10, 0xD1, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
            0x3F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xAB, 0xF0, 0x31, 0xE0, 0xD5, 0x3C, 0x04, 0x6B,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x00, 0x00,
        ]
        try validate(observed, at: LSN("0/3000000")!)
        let parsed = try #require(observed.withUnsafeBytes { WALPageHeader($0) })
        #expect(parsed.systemIdentifier == sysid)
        #expect(parsed.remainingLength == 63)
    }

    @Test func rejectsEachKindOfBadHeader() {
        let at = LSN("0/3000000")!
        #expect(throws: WALPageError.badMagic(page: at, found: 0xD113)) {
            try validate(SyntheticWAL.header(at: at, magic: 0xD113), at: at)
        }
        #expect(throws: WALPageError.wrongPageAddress(expected: at, found: LSN("0/2000000")!)) {
            try validate(SyntheticWAL.header(at: LSN("0/2000000")!), at: at)
        }
        #expect(throws: WALPageError.systemIdentifierMismatch(page: at, expected: sysid, found: 42)) {
            try validate(SyntheticWAL.header(at: at, systemIdentifier: 42), at: at)
        }
        #expect(throws: WALPageError.timelineAhead(page: at, stream: 1, found: 2)) {
            try validate(SyntheticWAL.header(at: at, timeline: 2), at: at)
        }
        var flags = SyntheticWAL.header(at: at)
        flags[2] = 0x12
        #expect(throws: WALPageError.invalidFlags(page: at, info: 0x0012)) { try validate(flags, at: at) }
        var short = SyntheticWAL.header(at: at)
        short[2] = 0x00  // long flag cleared on a segment's first page
        #expect(throws: WALPageError.missingLongHeader(page: at)) { try validate(short, at: at) }
    }

    @Test func timelineMayStayLowerButNeverGoesDown() throws {
        var v = WALPageValidator(systemIdentifier: sysid, segmentSize: size, timeline: 2)
        let p0 = SyntheticWAL.header(at: LSN("0/5000000")!, timeline: 1)
        let p1 = SyntheticWAL.header(at: LSN("0/5002000")!, timeline: 2)
        let p2 = SyntheticWAL.header(at: LSN("0/5004000")!, timeline: 1)
        try p0.withUnsafeBytes { try v.validate(header: $0, pageAddress: LSN("0/5000000")!) }
        try p1.withUnsafeBytes { try v.validate(header: $0, pageAddress: LSN("0/5002000")!) }
        #expect(throws: WALPageError.timelineWentBackwards(page: LSN("0/5004000")!, previous: 2, found: 1)) {
            try p2.withUnsafeBytes { raw in try v.validate(header: raw, pageAddress: LSN("0/5004000")!) }
        }
    }
}

@Suite struct WALSegmentValidatorTests {
    let size = WALSegmentSize(bytes: 1 << 20)!
    let sysid: UInt64 = 7_711_355_351_252_201_643

    func validator() -> WALSegmentValidator {
        WALSegmentValidator(systemIdentifier: sysid, segmentSize: size, timeline: 1, segmentStart: size.startLSN(ofSegment: 3))
    }

    @Test func headersSplitAcrossChunksAreChecked() throws {
        let segment = SyntheticWAL.segment(number: 3, count: 3 * 8192, segmentSize: size)
        var v = validator()
        // Feed in awkward pieces: a header is only judged once it is complete.
        for end in [10, 8192 + 5, 8192 + 30, 2 * 8192 + 24, 3 * 8192] {
            let prefix = Array(segment[0..<end])
            let previous = [0, 10, 8192 + 5, 8192 + 30, 2 * 8192 + 24][
                [10, 8192 + 5, 8192 + 30, 2 * 8192 + 24, 3 * 8192].firstIndex(of: end)!]
            try prefix.withUnsafeBytes { try v.validate(segment: $0, previousLength: previous) }
        }
    }

    @Test func corruptSecondPageIsRefusedAndValidatorUnchanged() throws {
        var segment = SyntheticWAL.segment(number: 3, count: 2 * 8192, segmentSize: size)
        segment[8192 + 9] ^= 0xFF  // page address
        var v = validator()
        let before = v.pages.lastPageTimeline
        #expect(throws: WALSegmentValidator.Failure.self) {
            try segment.withUnsafeBytes { raw in try v.validate(segment: raw, previousLength: 0) }
        }
        #expect(v.pages.lastPageTimeline == before)
    }

    @Test func zeroFillAfterSwitchIsAcceptedButNothingAfterIt() throws {
        var segment = SyntheticWAL.segment(number: 3, count: 8192, segmentSize: size)
        segment += [UInt8](repeating: 0, count: 3 * 8192)
        var v = validator()
        try segment.withUnsafeBytes { try v.validate(segment: $0, previousLength: 0) }
        #expect(v.zeroFillStart == 8192)
        var more = segment + [UInt8](repeating: 0, count: 100)
        more[more.count - 1] = 1
        #expect(
            throws: WALSegmentValidator.Failure.dataAfterZeroFill(
                at: size.startLSN(ofSegment: 3).advanced(by: UInt64(more.count - 1)))
        ) {
            try more.withUnsafeBytes { raw in try v.validate(segment: raw, previousLength: segment.count) }
        }
    }

    @Test func zeroFirstPageIsNotAFill() {
        let zeros = [UInt8](repeating: 0, count: 8192)
        var v = validator()
        #expect(throws: WALSegmentValidator.Failure.self) {
            try zeros.withUnsafeBytes { raw in try v.validate(segment: raw, previousLength: 0) }
        }
    }
}
