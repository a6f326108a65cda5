import Foundation
import Testing

/// The files a release carries beside the program, read from the checkout this test was built from.
@Suite struct LicenseTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func read(_ name: String) throws -> String {
        try String(contentsOfFile: Self.root + "/" + name, encoding: .utf8)
    }

    /// The PostgreSQL Licence, whole: the notice, the grant and both disclaimers, with the holder filled in.
    @Test func theLicenceIsPostgreSQLsWithWalshipContributorsAsHolder() throws {
        let licence = try read("LICENSE")
        let words = licence.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        #expect(words.hasPrefix("PostgreSQL License Copyright (c) 2026, walship contributors Permission to use,"))
        for clause in [
            "Permission to use, copy, modify, and distribute this software and its documentation for any purpose, without fee, and without a written agreement is hereby granted, provided that the above copyright notice and this paragraph and the following two paragraphs appear in all copies.",
            "IN NO EVENT SHALL WALSHIP CONTRIBUTORS BE LIABLE TO ANY PARTY FOR DIRECT, INDIRECT, SPECIAL, INCIDENTAL, OR CONSEQUENTIAL DAMAGES,",
            "SPECIFICALLY DISCLAIM ANY WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE.",
            #"THE SOFTWARE PROVIDED HEREUNDER IS ON AN "AS IS" BASIS,"#,
        ] {
            #expect(words.contains(clause), "LICENSE lacks: \(clause)")
        }
        // No placeholder of the licence's template is left (<OWNER>, <YEAR>, <COPYRIGHT HOLDER>).
        #expect(!licence.contains("<") && !licence.contains(">"))
    }

    @Test func theReadmeNamesTheLicence() throws {
        let readme = try read("README.md")
        #expect(readme.contains("PostgreSQL Licence"))
        #expect(readme.contains("[LICENSE](LICENSE)"))
    }
}
