package doccheck

import (
	"bufio"
	"bytes"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The snippets are fragments, written for a reader: statements without
// their function, "..." where the app's own code goes, names the prose
// introduces (an open replica r, a context ctx). Each document becomes one
// Go file: its type declarations at the top, each block of statements the
// body of a function returning error, importing the module's packages
// and the standard ones below, with the givens declared for it. Only errors a reader would trip on count: names
// declared or imported and left unused are a fragment's nature.

// stdImports are the standard packages the snippets may use; every
// package of the module a reader can import is added (modulePackages).
var stdImports = []string{"context", "errors", "fmt", "log", "net/http", "os", "time"}

// givens are the names the prose introduces before a document's
// snippets use them, and stand-ins for the app's own code.
const givens = `
var (
	err      error
	ctx      context.Context
	r        *replica.Replica
	products *replica.Collection
	id       string
	apiKey   string
	token    string
	relayURL string
	login    interface{ AccessToken(context.Context) (string, error) }
	battery  interface{ Charging() bool }
)

func show(replica.Record) {}
`

// givensFor are the givens of one source where they differ.
var givensFor = map[string]string{
	"replica/doc.go": `
var dir string

type Product struct {
	Name string ` + "`ferry:\"name\"`" + `
	Qty  int    ` + "`ferry:\"qty\"`" + `
}
`,
	"relay/doc.go": `
var (
	ctx  context.Context
	dir  string
	apps []relay.App
)
`,
	"relay/amrepo/doc.go": `
var opts *relay.Options
`,
	"relay/badgerstore/doc.go": `
var (
	dir  string
	auth *relay.Auth
)
`,
	"transport/doc.go": `
var (
	ctx   context.Context
	w     http.ResponseWriter
	r     *http.Request
	key   string
	token string
	id    string
)
`,
}

// snippet is one block of Go in a source, with the line it starts on.
type snippet struct {
	line int
	code string
}

func TestDocSnippetsCompile(t *testing.T) {
	root := moduleRoot(t)
	sources := map[string][]snippet{}
	mds, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	mds = append(mds, filepath.Join(root, "README.md"))
	for _, p := range mds {
		if s := markdownSnippets(t, p); len(s) > 0 {
			sources[rel(root, p)] = s
		}
	}
	docs, _ := filepath.Glob(filepath.Join(root, "*", "doc.go"))
	more, _ := filepath.Glob(filepath.Join(root, "*", "*", "doc.go"))
	for _, p := range append(docs, more...) {
		if s := docGoSnippets(t, p); len(s) > 0 {
			sources[rel(root, p)] = s
		}
	}
	for _, must := range []string{"README.md", "docs/getting-started.md", "replica/doc.go"} {
		if len(sources[must]) == 0 {
			t.Fatalf("no Go snippets found in %s: the extraction is broken", must)
		}
	}

	imports := append(slices.Clone(stdImports), modulePackages(t, root)...)
	fset := token.NewFileSet()
	exports := exportData(t, root, imports)
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	for name, snips := range sources {
		src := program(name, snips, imports)
		// The file has no folder, so the //line names stay as written.
		f, err := parser.ParseFile(fset, "snippets.go", src, parser.ParseComments)
		if err != nil {
			t.Errorf("%v\n(a snippet of %s is not Go)", err, name)
			continue
		}
		var errs []string
		conf := types.Config{Importer: imp, Error: func(err error) {
			te := err.(types.Error)
			if strings.Contains(te.Msg, "declared and not used") || strings.Contains(te.Msg, "imported and not used") {
				return
			}
			errs = append(errs, fmt.Sprintf("%s: %s", fset.Position(te.Pos), te.Msg))
		}}
		conf.Check("snippets", fset, []*ast.File{f}, nil)
		for _, e := range errs {
			t.Errorf("%s", e)
		}
		t.Logf("%s: %d snippet(s) checked", name, len(snips))
	}
}

// program is a source's snippets as one Go file, with //line comments so
// errors name the document's lines.
func program(name string, snips []snippet, imports []string) string {
	var decls, funcs strings.Builder
	for i, s := range snips {
		d, stmts := split(s.code)
		if d.code != "" {
			fmt.Fprintf(&decls, "\n//line %s:%d\n%s\n", name, s.line+d.line, d.code)
		}
		if strings.TrimSpace(stmts.code) != "" {
			fmt.Fprintf(&funcs, "\nfunc snippet%d() error {\n//line %s:%d\n%s\nreturn nil\n}\n", i, name, s.line+stmts.line, stmts.code)
		}
	}
	var b strings.Builder
	b.WriteString("package snippets\n\nimport (\n")
	for _, p := range imports {
		fmt.Fprintf(&b, "\t%q\n", p)
	}
	b.WriteString(")\n")
	if g, ok := givensFor[name]; ok {
		b.WriteString(g)
	} else {
		b.WriteString(givens)
	}
	b.WriteString(decls.String())
	b.WriteString(funcs.String())
	return b.String()
}

var (
	ellipsisBlock = regexp.MustCompile(`\{\s*\.\.\.\s*\}`)
	ellipsisLine  = regexp.MustCompile(`^\s*\.\.\.\s*$`)
)

// split parts a snippet into its declarations at the left margin (type,
// func, var and const blocks) and its statements, each with the line,
// counted from the snippet's first, where it starts. Placeholders ("...")
// become nothing.
func split(code string) (decls, stmts snippet) {
	code = ellipsisBlock.ReplaceAllString(code, "{}")
	lines := strings.Split(code, "\n")
	var d, s []string
	stmts.line, decls.line = -1, -1
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if ellipsisLine.MatchString(l) {
			l = ""
		}
		if strings.HasPrefix(l, "type ") || strings.HasPrefix(l, "func ") {
			if decls.line < 0 {
				decls.line = i
			}
			for len(d) < i-decls.line {
				d = append(d, "") // keeps //line right
			}
			d = append(d, l)
			if strings.HasSuffix(l, "{") {
				for i+1 < len(lines) {
					i++
					d = append(d, lines[i])
					if lines[i] == "}" || strings.HasPrefix(lines[i], "})") {
						break
					}
				}
			}
			continue
		}
		if stmts.line < 0 {
			if strings.TrimSpace(l) == "" {
				continue
			}
			stmts.line = i
		}
		for len(s) < i-stmts.line {
			s = append(s, "")
		}
		s = append(s, l)
	}
	decls.code, stmts.code = strings.Join(d, "\n"), strings.Join(s, "\n")
	decls.line, stmts.line = max(decls.line, 0), max(stmts.line, 0)
	return decls, stmts
}

// markdownSnippets returns the ```go blocks of a Markdown file.
func markdownSnippets(t *testing.T, path string) []snippet {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []snippet
	var cur *snippet
	var code []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(l) == "```go":
			cur, code = &snippet{line: n + 1}, nil
		case cur != nil && strings.TrimSpace(l) == "```":
			cur.code = strings.Join(code, "\n")
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			code = append(code, l)
		}
	}
	return out
}

// docGoSnippets returns the code blocks of a doc.go comment: runs of
// lines indented with a tab, that hold Go statements (":="); the other
// indented blocks are tables and lists.
func docGoSnippets(t *testing.T, path string) []snippet {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []snippet
	var cur *snippet
	var code []string
	end := func() {
		if cur != nil && strings.Contains(strings.Join(code, "\n"), ":=") {
			cur.code = strings.Join(code, "\n")
			out = append(out, *cur)
		}
		cur = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		if c, ok := strings.CutPrefix(l, "//\t"); ok {
			if cur == nil {
				cur, code = &snippet{line: n}, nil
			}
			code = append(code, c)
			continue
		}
		if cur != nil && l == "//" {
			code = append(code, "")
			continue
		}
		end()
		if !strings.HasPrefix(l, "//") {
			break // the package clause: the comment is over
		}
	}
	end()
	return out
}

// modulePackages lists the module's packages an app can import: not
// commands, not internal ones, one per package name.
func modulePackages(t *testing.T, root string) []string {
	t.Helper()
	out := goList(t, root, "-f", "{{.Name}}\t{{.ImportPath}}", "./...")
	var paths []string
	names := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, path, _ := strings.Cut(l, "\t")
		if name == "main" || name == "" || strings.Contains(path, "/internal/") || names[name] {
			continue
		}
		names[name] = true
		paths = append(paths, path)
	}
	return paths
}

// exportData maps import paths to their compiled export data, from go
// list: the snippets are checked against the code as it is built.
func exportData(t *testing.T, root string, imports []string) map[string]string {
	t.Helper()
	args := []string{"-export", "-deps", "-f", "{{.ImportPath}}\t{{.Export}}"}
	if raceBuild {
		args = append(args, "-race")
	}
	out := goList(t, root, append(args, imports...)...)
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if p, f, ok := strings.Cut(l, "\t"); ok && f != "" {
			m[p] = f
		}
	}
	return m
}

func goList(t *testing.T, root string, args ...string) string {
	t.Helper()
	cmd := exec.Command(goTool(), append([]string{"list"}, args...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	return string(out)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func rel(root, p string) string {
	r, _ := filepath.Rel(root, p)
	return filepath.ToSlash(r)
}
