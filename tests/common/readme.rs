//! README.md's code blocks, for the tests that run what the README tells a user to type.

/// The fenced code block of README.md in `language` that contains `needle`.
pub fn readme_block(language: &str, needle: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = format!("```{language}\n");
    let block = readme
        .split(fence.as_str())
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .find(|block| block.contains(needle));
    block.unwrap_or_else(|| panic!("no ```{language} block with {needle:?} in README.md")).to_owned()
}
