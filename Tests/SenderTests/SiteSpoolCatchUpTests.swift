import Testing
import WALCore

@testable import Sender

/// Which WAL of a timeline the primary has left a sender ships from its own site's spool (`--site-spool`).
@Suite struct SiteSpoolCatchUpTests {
    let start = LSN(0x500_0000)
    let timelineEnd = LSN(0x900_0123)

    @Test func theWholeRestOfTheTimelineWhenTheSpoolHoldsItAndMore() {
        // The spool's copy may reach past the switch point (the other site's tail): never shipped on this timeline.
        let held = LSN(0x500_0000)..<LSN(0xA00_0000)
        #expect(SiteSpoolCatchUp.range(from: start, held: held, timelineEnd: timelineEnd) == start..<timelineEnd)
        #expect(
            SiteSpoolCatchUp.range(from: LSN(0x600_0010), held: held, timelineEnd: timelineEnd)
                == LSN(0x600_0010)..<timelineEnd)
    }

    @Test func asFarAsTheSpoolHoldsItWhenLess() {
        let held = LSN(0x400_0000)..<LSN(0x700_0400)
        #expect(SiteSpoolCatchUp.range(from: start, held: held, timelineEnd: timelineEnd) == start..<LSN(0x700_0400))
    }

    @Test func nothingWhenTheSpoolDoesNotReachBackOrHasNothingAfter() {
        #expect(SiteSpoolCatchUp.range(from: start, held: nil, timelineEnd: timelineEnd) == nil)
        #expect(SiteSpoolCatchUp.range(from: start, held: LSN(0x500_0001)..<LSN(0xA00_0000), timelineEnd: timelineEnd) == nil)
        #expect(SiteSpoolCatchUp.range(from: start, held: LSN(0x400_0000)..<start, timelineEnd: timelineEnd) == nil)
        #expect(
            SiteSpoolCatchUp.range(from: timelineEnd, held: LSN(0x400_0000)..<LSN(0xA00_0000), timelineEnd: timelineEnd) == nil)
    }
}
