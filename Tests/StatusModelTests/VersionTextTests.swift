import StatusModel
import Testing

@Suite struct VersionTextTests {
    @Test func theReleaseTheShipProtocolAndTheBuild() {
        #expect(
            versionText(protocolVersion: 2, build: "6e509ed4a1b2 2026-12-07")
                == "walship \(walshipVersion) (ship protocol 2, built 6e509ed4a1b2 2026-12-07)")
        #expect(
            versionText(protocolVersion: 3, build: "6e509ed4a1b2-dirty 2026-12-07")
                == "walship \(walshipVersion) (ship protocol 3, built 6e509ed4a1b2-dirty 2026-12-07)")
    }

    /// A plain `swift build` passes no build: the line says so instead of leaving a gap.
    @Test func anUnknownBuildSaysUnknown() {
        for build in ["", " ", "unknown"] {
            #expect(versionText(protocolVersion: 2, build: build) == "walship \(walshipVersion) (ship protocol 2, built unknown)")
        }
    }

    /// Scripts take the first two words: the program and its release.
    @Test func theFirstTwoWordsAreTheProgramAndItsRelease() {
        let words = versionText(protocolVersion: 2, build: "abc 2026-12-07").split(separator: " ")
        #expect(words.prefix(2) == ["walship", Substring(walshipVersion)])
    }
}
