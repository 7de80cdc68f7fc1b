//! Reading the shell examples of Markdown documents, for the tests that keep the docs true: the
//! logical lines of fenced code blocks and a shell-like word splitter.

/// The logical lines of every fenced code block in `markdown`, with the line each starts on:
/// a `$ ` prompt is removed and lines ending in `\` are joined with the next.
pub fn shell_lines(markdown: &str) -> Vec<(usize, String)> {
    let (mut lines, mut in_block, mut pending, mut start) = (Vec::new(), false, String::new(), 0);
    for (number, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            pending.clear();
            continue;
        }
        if !in_block {
            continue;
        }
        if pending.is_empty() {
            start = number + 1;
        }
        let line = line.trim_start().strip_prefix("$ ").unwrap_or(line.trim_start());
        if let Some(joined) = line.strip_suffix('\\') {
            pending.push_str(joined);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        lines.push((start, std::mem::take(&mut pending)));
    }
    lines
}

/// The lines of `markdown` under the heading `heading` (e.g. `## The GitLab simulator`), up to
/// the next heading of the same or a higher level outside a code block.
pub fn section(markdown: &str, heading: &str) -> Option<String> {
    let level = heading.split(' ').next()?.len();
    let mut lines = markdown.lines().skip_while(|line| *line != heading).skip(1);
    let (mut body, mut in_block) = (Vec::new(), false);
    for line in lines.by_ref() {
        in_block ^= line.trim_start().starts_with("```");
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !in_block && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            break;
        }
        body.push(line);
    }
    markdown.lines().any(|line| line == heading).then(|| body.join("\n"))
}

/// Splits a shell line into words, honouring single and double quotes and backslashes, and
/// cuts it at an unquoted `#` that starts a word (a comment).
pub fn words(line: &str) -> Vec<String> {
    let (mut words, mut current, mut in_word) = (Vec::new(), String::new(), false);
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => current.extend(chars.next()),
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                current.extend(chars.next());
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

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
