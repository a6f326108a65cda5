import Testing

@testable import Receiver

@Suite struct LoopOccupancyTests {
    final class Loop {}
    // Kept alive: identifiers of freed objects may repeat.
    let loops = (Loop(), Loop())
    var first: ObjectIdentifier { ObjectIdentifier(loops.0) }
    var second: ObjectIdentifier { ObjectIdentifier(loops.1) }

    @Test func aLoopIsASystemsAloneOnlyWhileNoOtherSystemsLinkIsOnIt() {
        var occupancy = LoopOccupancy()
        #expect(!occupancy.carriesOnly(1, on: first))
        occupancy.linkStarted(on: first, system: 1)
        #expect(occupancy.carriesOnly(1, on: first))
        // Another system's link lands on the same loop: neither may fsync there now.
        occupancy.linkStarted(on: first, system: 2)
        #expect(!occupancy.carriesOnly(1, on: first) && !occupancy.carriesOnly(2, on: first))
        // A link on another loop changes nothing here.
        occupancy.linkStarted(on: second, system: 3)
        #expect(occupancy.carriesOnly(3, on: second))
        occupancy.linkEnded(on: first, system: 2)
        #expect(occupancy.carriesOnly(1, on: first))
    }

    @Test func twoLinksOfOneSystemKeepTheLoopTheirsUntilBothEnd() {
        var occupancy = LoopOccupancy()
        occupancy.linkStarted(on: first, system: 1)
        occupancy.linkStarted(on: first, system: 1)
        occupancy.linkEnded(on: first, system: 1)
        #expect(occupancy.carriesOnly(1, on: first))
        occupancy.linkStarted(on: first, system: 2)
        occupancy.linkEnded(on: first, system: 1)
        #expect(occupancy.carriesOnly(2, on: first))
        occupancy.linkEnded(on: first, system: 2)
        occupancy.linkEnded(on: first, system: 2)
        #expect(!occupancy.carriesOnly(2, on: first))
    }
}
