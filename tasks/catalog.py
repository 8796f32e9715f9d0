"""The seven Flywheel tasks. Slugs are part of the public interface (endpoints, dataset configs)."""

from __future__ import annotations

from tasks.base import InputField, Task

QUALITY_FLAGS = ("great", "generic", "off-topic", "repetitive", "inappropriate")

CONVERSATION_STARTER = Task(
    slug="conversation_starter",
    title="Conversation starters",
    description="An opening line tailored to someone's bio and interests.",
    fields=(
        InputField("bio", "Bio", 1000, lines=3, placeholder="A few sentences about the person"),
        InputField("interests", "Interests", 300, placeholder="hiking, jazz, sourdough"),
    ),
    system_prompt=(
        "You write one friendly, specific conversation starter. It must refer to the person's "
        "bio or interests, be a single sentence or question, and never be generic."
    ),
    user_template="Bio: {bio}\nInterests: {interests}\n\nWrite one conversation starter for this person.",
    flags=QUALITY_FLAGS,
    good_flags=("great",),
    examples=(
        {"bio": "Nurse on night shifts who spends weekends restoring an old sailboat.",
         "interests": "sailing, crime podcasts, night markets"},
        {"bio": "Second-year chemistry student, moved from Lagos to Leeds last autumn.",
         "interests": "afrobeats, football, cooking jollof for friends"},
        {"bio": "Retired teacher learning to code so she can build a birdwatching app.",
         "interests": "birds, Python, crosswords"},
    ),
    main_metric="bertscore_f1",
)

DIALOGUE_SUMMARY = Task(
    slug="dialogue_summary",
    title="Dialogue summary",
    description="A short, faithful summary of a conversation.",
    fields=(InputField("dialogue", "Dialogue", 6000, lines=10,
                       placeholder="#Person1#: ...\n#Person2#: ..."),),
    system_prompt="You summarise conversations in one or two sentences, faithfully and without invention.",
    user_template="Summarize the following conversation.\n\n{dialogue}\n\nSummary:",
    flags=("great", "inaccurate", "incomplete", "too-long", "inappropriate"),
    good_flags=("great",),
    examples=(
        {"dialogue": "#Person1#: Did you book the room for Friday's review?\n"
                     "#Person2#: Not yet, the big one is taken until three.\n"
                     "#Person1#: Then take the small one at two and I'll tell the team.\n"
                     "#Person2#: Fine, I'll book it now."},
        {"dialogue": "#Person1#: Your library books are two weeks late.\n"
                     "#Person2#: I'm sorry, I was ill. Is there a fine?\n"
                     "#Person1#: Fifty pence a day, but with a doctor's note we can waive it.\n"
                     "#Person2#: I'll bring the note tomorrow."},
    ),
    main_metric="rougeL",
)

DIALOGUE_RESPONSE = Task(
    slug="dialogue_response",
    title="Dialogue response",
    description="The next turn of a conversation, relevant to what was said.",
    fields=(InputField("dialogue", "Dialogue so far", 4000, lines=8,
                       placeholder="One turn per line"),),
    system_prompt="You continue conversations with one natural, relevant reply.",
    user_template="Here is a conversation, one turn per line:\n\n{dialogue}\n\nWrite the next turn only.",
    flags=QUALITY_FLAGS,
    good_flags=("great",),
    examples=(
        {"dialogue": "Excuse me, is this the train to Glasgow?\nYes, but it leaves from platform four today."},
        {"dialogue": "I finally finished the marathon!\nCongratulations! How do your legs feel?"},
    ),
    main_metric="bertscore_f1",
)

DETOX = Task(
    slug="detox",
    title="Detoxified continuation",
    description="Continues a text without toxic language; each output shows its toxicity score.",
    fields=(InputField("prompt", "Text to continue", 1000, lines=3),),
    system_prompt="You continue the user's text naturally, in a civil and non-toxic way.",
    user_template="Continue this text: {prompt}",
    flags=("fine", "toxic"),
    good_flags=("fine",),
    examples=(
        {"prompt": "The referee made the worst call of the season, and the fans"},
        {"prompt": "When my neighbour parked across my driveway again, I"},
    ),
    main_metric="toxicity_mean",
    higher_is_better=False,
    continuation=True,
)

TWEET = Task(
    slug="tweet",
    title="Business tweet",
    description="A business tweet from a short prompt, rated on four qualities.",
    fields=(InputField("prompt", "Prompt", 280, placeholder="Advice for entrepreneurs"),),
    system_prompt="You write one short, original business tweet (under 280 characters) with no hashtags spam.",
    user_template="Write a tweet about: {prompt}",
    flags=(),
    feedback_kinds=("rating",),
    rating_weights={"relevance": 0.35, "clarity": 0.25, "originality": 0.2, "engagement": 0.2},
    examples=(
        {"prompt": "Advice for entrepreneurs"},
        {"prompt": "Launching a coffee subscription for remote teams"},
        {"prompt": "Why small businesses should answer every review"},
    ),
    main_metric="reward",
)

ELEVATOR_PITCH = Task(
    slug="elevator_pitch",
    title="Elevator pitch",
    description="A 30-second pitch built from a short form.",
    fields=(
        InputField("position", "Position", 120, placeholder="a student"),
        InputField("experience", "Experience", 400, lines=2, placeholder="a data science intern"),
        InputField("goals", "Goals", 300, placeholder="to learn how teams ship models"),
        InputField("strengths", "Strengths", 300, placeholder="attention to detail"),
    ),
    system_prompt=(
        "You write confident, concise elevator pitches of four to five sentences in the first person."
    ),
    user_template=(
        "Write an elevator pitch that follows this template, filling it in naturally:\n"
        "I am {position}. During my experience as {experience}, ... My goals are {goals}. "
        "I believe my {strengths} will ..."
    ),
    flags=("great", "generic", "off-topic", "too-long", "inappropriate"),
    good_flags=("great",),
    examples=(
        {"position": "a student", "experience": "a data science intern",
         "goals": "to learn how production ML teams work", "strengths": "attention to detail"},
        {"position": "a pastry chef", "experience": "head of a hotel bakery",
         "goals": "to open a bakery school", "strengths": "patience and teaching"},
    ),
    main_metric="bertscore_f1",
)

ARENA = Task(
    slug="arena",
    title="Arena",
    description="Two answers side by side: vote for the better one.",
    fields=(InputField("prompt", "Prompt", 2000, lines=3),),
    system_prompt="You are a helpful, honest assistant.",
    user_template="{prompt}",
    feedback_kinds=("preference",),
    examples=(
        {"prompt": "Explain what a LoRA adapter is to a product manager in three sentences."},
        {"prompt": "Give me two tips for a first marathon."},
    ),
    main_metric="reward_model",
)

TASKS: dict[str, Task] = {
    t.slug: t
    for t in (CONVERSATION_STARTER, DIALOGUE_SUMMARY, DIALOGUE_RESPONSE, DETOX, TWEET,
              ELEVATOR_PITCH, ARENA)
}
