"""Calendar arithmetic for campaigns' schedules: recurring rules, the lunar calendar (Tết
greetings) and send windows. Pure: no database, settings or campaigns; firing the rules is a
campaign use case (``dispatcher.campaigns.firing``)."""
