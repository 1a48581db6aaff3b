package stagecli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/bubbles/spinner"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/slipway-ci/slipway/internal/stage"
)

// liveView is the terminal's display of a running stage: log lines scroll
// above a status line that shows the phase, a spinner while the stage
// waits, and each running step with its elapsed time.
type liveView struct {
	program *tea.Program
	done    chan struct{}
	once    sync.Once
}

type statusMsg struct{ st *stage.Status }

type quitMsg struct{}

type liveModel struct {
	spin spinner.Model
	st   *stage.Status
	now  func() time.Time
	// seen is when each step was first seen running: a running step's
	// status has no start time until it ends.
	seen map[string]time.Time
}

func startLive(out io.Writer, now func() time.Time) *liveView {
	m := liveModel{spin: spinner.New(spinner.WithSpinner(spinner.Dot)), now: now, seen: map[string]time.Time{}}
	v := &liveView{
		program: tea.NewProgram(m, tea.WithOutput(out), tea.WithInput(nil), tea.WithoutSignalHandler()),
		done:    make(chan struct{}),
	}
	go func() {
		defer close(v.done)
		_, _ = v.program.Run()
	}()
	return v
}

func (v *liveView) update(st *stage.Status) { v.program.Send(statusMsg{st}) }

func (v *liveView) println(line string) { v.program.Println(line) }

// close ends the view and waits until the terminal is left clean.
func (v *liveView) close() {
	v.once.Do(func() {
		v.program.Send(quitMsg{})
		<-v.done
	})
}

func (m liveModel) Init() tea.Cmd { return m.spin.Tick }

func (m liveModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case statusMsg:
		m.st = msg.st
		for _, g := range m.st.Groups {
			for _, s := range g.Steps {
				if _, ok := m.seen[s.ID]; !ok && s.State == stage.StateRunning {
					m.seen[s.ID] = m.now()
				}
			}
		}
		return m, nil
	case quitMsg:
		return m, tea.Quit
	case spinner.TickMsg:
		var cmd tea.Cmd
		m.spin, cmd = m.spin.Update(msg)
		return m, cmd
	}
	return m, nil
}

func (m liveModel) View() string {
	st := m.st
	if st == nil {
		return ""
	}
	now := m.now()
	since := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() }
	var b strings.Builder
	switch st.Phase {
	case stage.PhaseQueued:
		fmt.Fprintf(&b, "%s stage %s: waiting for a VM of pool %s (%s)", m.spin.View(), st.ID, st.Pool, since(st.Timings.QueuedAt))
	case stage.PhaseRunning:
		var running []string
		for _, g := range st.Groups {
			for _, s := range g.Steps {
				if s.State == stage.StateRunning {
					running = append(running, s.ID+" "+since(m.seen[s.ID]))
				}
			}
		}
		sort.Strings(running)
		what := "waiting for the next group"
		if len(running) > 0 {
			what = "running " + strings.Join(running, ", ")
		}
		fmt.Fprintf(&b, "%s stage %s on %s: %s", m.spin.View(), st.ID, st.VM, what)
	case stage.PhaseReleasing:
		fmt.Fprintf(&b, "%s stage %s: %s, releasing its VM", m.spin.View(), st.ID, st.Result)
	default:
		fmt.Fprintf(&b, "stage %s: %s", st.ID, st.Phase)
	}
	return b.String() + "\n"
}
